r"""DUCH on RSICD-AID at 16, 32, 64 and 128 bits, both variants, and the caption options.

    python -m benchmarks.duch_benchmark --data_dir=../shared/data/rsicd \
        --features=/path/to/rsicd_store --out=runs/duch_benchmark [--epochs=100]

Each run is an ordinary `train.train` run folder under --out (finished runs are reused,
so a killed benchmark resumes). Writes `results.md` (mAP@20, authors' definition, and
training wall time) and `map_vs_bits.png` with the published DUCH RSICD row drawn for
reference (other features and the full RSICD: a reference, not a like-for-like figure).

The `all_pairs` run makes every one of the five captions of a training image its own
pair, so one of its epochs is five epochs of the others: it trains --all_pairs_epochs
(default --epochs / 5), the same number of gradient steps as the one-caption runs.
"""

import json
import os

import keras
import tensorflow as tf
from absl import app, flags

from rs_hashing import config as config_lib
from rs_hashing import plots
from rs_hashing.training import trainer

flags.DEFINE_string("data_dir", None, "RSICD-AID folder.", required=True)
flags.DEFINE_string("features", None, "Feature store of RSICD-AID.", required=True)
flags.DEFINE_string("out", "runs/duch_benchmark", "Folder for the runs and the results.")
flags.DEFINE_integer("epochs", 100, "Epochs per run (the papers': 100).")
flags.DEFINE_list("bits", ["16", "32", "64", "128"], "Code lengths.")
flags.DEFINE_integer("all_pairs_epochs", None,
                     "Epochs of the all_pairs run (default --epochs / 5: the same number of steps).")
flags.DEFINE_list("runs", ["bits", "as_coded", "random", "all_pairs"],
                  "Which groups to run: bits (as_intended at every length), as_coded (every "
                  "length), random and all_pairs (caption options at 64 bits), tuned "
                  "(temperature 0.5 + random captions at 64 bits).")
FLAGS = flags.FLAGS

# DUCH, RSICD, mAP@20 at 16/32/64/128 bits (METHOD.md; other features, full RSICD).
PUBLISHED = {"i2t": [0.684, 0.791, 0.836, 0.829], "t2i": [0.697, 0.780, 0.824, 0.826]}
PUBLISHED_BITS = [16, 32, 64, 128]


def run_specs():
    bits = [int(b) for b in FLAGS.bits]
    specs = []
    if "bits" in FLAGS.runs:
        specs += [(f"as_intended_{b}", {"bits": b}) for b in bits]
    if "as_coded" in FLAGS.runs:
        specs += [(f"as_coded_{b}", {"bits": b, "variant": "as_coded"}) for b in bits]
    if "random" in FLAGS.runs:
        specs.append(("random_captions_64", {"bits": 64, "caption_mode": "random"}))
    if "all_pairs" in FLAGS.runs:  # Five pairs per image: an epoch is five epochs of steps.
        epochs = FLAGS.all_pairs_epochs or max(1, FLAGS.epochs // 5)
        specs.append(("all_pairs_captions_64", {"bits": 64, "caption_mode": "all_pairs", "epochs": epochs}))
    if "tuned" in FLAGS.runs:  # Beyond the papers: a sharper NT-Xent and a fresh caption per epoch.
        specs.append(("tuned_t0.5_random_64", {"bits": 64, "temperature": 0.5, "caption_mode": "random"}))
    return specs


def main(argv):
    del argv
    base = config_lib.apply_overrides(config_lib.get_preset("rsicd"), {
        "data_dir": FLAGS.data_dir, "features": FLAGS.features, "epochs": FLAGS.epochs})
    results = {}
    for name, overrides in run_specs():
        workdir = os.path.join(FLAGS.out, name)
        metrics_path = os.path.join(workdir, "metrics.json")
        if not os.path.exists(metrics_path):
            config = config_lib.apply_overrides(base, dict(overrides, run_dir=workdir))
            keras.utils.set_random_seed(config.train.seed)
            tf.config.experimental.enable_op_determinism()
            print(f"=== {name}", flush=True)
            trainer.train(config, verbose=0)
        with open(metrics_path, encoding="utf-8") as f:
            results[name] = json.load(f)

    lines = ["| run | bits | epochs | I->T | T->I | I->I | T->T | I->T trunc. | T->I trunc. | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m, t = r["map@20"], r["map@20_truncated"]
        bits = name.rsplit("_", 1)[1]
        lines.append(f"| {name.rsplit('_', 1)[0]} | {bits} | {r['epochs']} | {m['i2t']:.3f} | {m['t2i']:.3f} | {m['i2i']:.3f} | "
                     f"{m['t2t']:.3f} | {t['i2t']:.3f} | {t['t2i']:.3f} | {r['train_seconds']:.0f} |")
    table = "\n".join(lines)
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "results.md"), "w", encoding="utf-8") as f:
        f.write("mAP@20 (authors' definition unless marked truncated), RSICD-AID, papers' protocol\n\n")
        f.write(table + "\n")
    print(table)

    bits = [int(b) for b in FLAGS.bits]
    series = {}
    for variant in ("as_intended", "as_coded"):
        for task in ("i2t", "t2i"):
            values = [results.get(f"{variant}_{b}", {}).get("map@20", {}).get(task) for b in bits]
            if all(v is not None for v in values):
                series[f"{variant} {task}"] = values
    if series and bits == PUBLISHED_BITS:
        plots.plot_sweep(bits, series, os.path.join(FLAGS.out, "map_vs_bits.png"), xlabel="bits",
                         title="DUCH on RSICD-AID",
                         reference={f"published DUCH RSICD {t}": v for t, v in PUBLISHED.items()})


if __name__ == "__main__":
    app.run(main)
