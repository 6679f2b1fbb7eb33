r"""DUCH on RSICD-AID over several seeds: the papers' settings, the default, the
authors' released code on the same features and splits, and the choice of the default on
a validation split.

    # choose: every candidate on the validation split (20% of the training images)
    python -m benchmarks.duch_benchmark --data_dir=../shared/data/rsicd \
        --features=feats/rsicd --out=runs/duch_benchmark --validation --seeds=2

    # report: the papers' settings, the default and the authors' code on the test split
    python -m benchmarks.duch_benchmark --data_dir=../shared/data/rsicd \
        --features=feats/rsicd --out=runs/duch_benchmark --seeds=3 \
        --runs=as_intended,as_coded,default,authors

Seed s gives the split, the caption draw, the initialisation and the batch order
(`benchmarks.seeded_runs`); the authors' code gets the same s, hence the same split and
captions. Each run is `rs-hashing train` in its own process (`<out>/<test|validation>/
<run>_<bits>/seed<s>/`, reused when finished, so a killed benchmark resumes); `default` is the
two-stage run (`rs_hashing.training.stages`: its frozen stage in `seed<s>/frozen`, then the
image top tuned on `<features>_image1`, extracted by the run if missing). Writes
`<out>/results.md` (or `validation.md`): mAP@20 (authors' definition) of the codes and of
the heads' continuous outputs (the binarisation gap) as mean +- sd over the seeds, then the
per-seed values and the speed lines: each run's floating-point work, the GFLOP/s it
achieved against this CPU's fp32 matmul rate measured in the same process, wall time,
CPU time and peak memory, beside the authors' code's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from benchmarks import seeded_runs
from rs_hashing import config as config_lib
from rs_hashing.training import stages

flags.DEFINE_string("data_dir", None, "RSICD-AID folder.", required=True)
flags.DEFINE_string("features", None, "Feature store of RSICD-AID.", required=True)
flags.DEFINE_string("out", "runs/duch_benchmark", "Folder for the runs and the results.")
flags.DEFINE_string("preset", "rsicd", "Base configuration.")
flags.DEFINE_integer("seeds", 3, "Number of seeds (42, 43, ...).")
flags.DEFINE_integer("epochs", 100, "Epochs per run (the papers': 100).")
flags.DEFINE_list("bits", ["64"], "Code lengths.")
flags.DEFINE_list("runs", ["as_intended", "as_coded", "default", "authors"],
                  "Runs: the named settings of RUNS, `default` (the preset as it is) and `authors` (the "
                  "authors' released code, where --authors_python has torch).")
flags.DEFINE_bool("validation", False, "Train on the training images less a validation split and report "
                  "validation mAP (for choosing settings): runs --runs, or every candidate when --runs is "
                  "left at its default.")
flags.DEFINE_string("authors_python", sys.executable, "Python with torch and h5py for the authors' code.")
FLAGS = flags.FLAGS

# The papers' settings, spelt out so that changing a default does not move these rows:
# frozen encoders, one stage.
PAPERS = {"temperature": 1.0, "caption_mode": "one", "variant": "as_intended", "target_codes": "training",
          "image_trainable_stages": 0, "tuned_epochs": 0}
RUNS = {
    "as_intended": dict(PAPERS),
    "as_coded": dict(PAPERS, variant="as_coded"),
    # Candidates for the default, compared on the validation split.
    "as_intended_t0.5_random": dict(PAPERS, temperature=0.5, caption_mode="random"),
    "as_coded_t0.5_random": dict(PAPERS, variant="as_coded", temperature=0.5, caption_mode="random"),
    "as_coded_t0.5": dict(PAPERS, variant="as_coded", temperature=0.5),
    "as_coded_t0.3_random": dict(PAPERS, variant="as_coded", temperature=0.3, caption_mode="random"),
    "as_intended_inference_targets": dict(PAPERS, target_codes="inference"),
    # Closing the binarisation gap (issue 19): the quantisation weight (the authors'
    # balance is 0.002 x bits = 0.128 at 64 bits), straight-through signs in the last
    # epochs; and a random one of the image's captions each epoch at the papers' T.
    "as_intended_q0.5": dict(PAPERS, quantization_weight=0.5),
    "as_intended_q2": dict(PAPERS, quantization_weight=2.0),
    "as_intended_q1": dict(PAPERS, quantization_weight=1.0),
    "as_intended_q0.5_st25": dict(PAPERS, quantization_weight=0.5, straight_through_epochs=25),
    "as_intended_st25": dict(PAPERS, straight_through_epochs=25),
    "as_intended_random": dict(PAPERS, caption_mode="random"),
    # Every caption as its own pair: 5x the pairs an epoch, so 20 epochs = the compute of 100.
    "as_intended_all_e20": dict(PAPERS, caption_mode="all_pairs", epochs=20),
    "as_intended_random_q0.5": dict(PAPERS, caption_mode="random", quantization_weight=0.5),
}
CANDIDATES = ["as_intended", "as_coded", "as_intended_t0.5_random", "as_coded_t0.5_random", "as_coded_t0.5",
              "as_coded_t0.3_random", "as_intended_q0.5", "as_intended_q2", "as_intended_st25", "as_intended_random",
              "as_intended_all_e20", "as_intended_q1", "as_intended_q0.5_st25",
              "as_intended_random_q0.5"]
AUTHORS = "authors"
# The candidate the presets' defaults train in their frozen stage (chosen on the
# validation split); the default then tunes the image top for 10 epochs
# (`rs_hashing.training.stages`, chosen on the validation split with
# benchmarks/tower_benchmark.py).
DEFAULT_RUN = "as_intended_random"
TASKS = ("i2t", "t2i", "i2i", "t2t")


def run_overrides(name: str) -> dict:
    if name == "default":
        return {}
    if name not in RUNS:
        raise app.UsageError(f"--runs: unknown run {name!r}; choose from default, {AUTHORS}, {', '.join(RUNS)}")
    return RUNS[name]


def matmul_gflops(rows: int, inner: int, outer: int, seconds: float = 3.0) -> float:
    """This CPU's fp32 matmul rate on the heads' first-layer shape, measured now (GFLOP/s)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    a, b = tf.random.normal([rows, inner]), tf.random.normal([inner, outer])
    step = tf.function(lambda a, b: tf.matmul(a, b))
    step(a, b).numpy()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step(a, b).numpy()
        count += 1
    return 2.0 * rows * inner * outer * count / (time.perf_counter() - started) / 1e9


def training_flops(store_dims: tuple[int, int], config: config_lib.Config, pairs_per_epoch: int) -> float:
    """Matmul work of a DUCH run: per pair, 4 view passes (2 image, 2 text) of
    Dense(hidden) -> Dense(bits), forward and backward, every epoch. The backward pass
    computes both layers' weight gradients (the forward's work again) and the input
    gradient of the second layer only: the features are constants, and TensorFlow skips
    the first layer's input gradient (measured: forward + weight gradient = 1.9x forward,
    with the input gradient 3.0x)."""
    image_dim, text_dim = store_dims
    hidden, bits = config.model.hidden_dim, config.model.bits
    per_view = lambda dim: 2 * (dim * hidden + hidden * bits) * 2 + 2 * hidden * bits  # noqa: E731
    return float(2 * per_view(image_dim) + 2 * per_view(text_dim)) * pairs_per_epoch * config.train.epochs


def store_dims(features: str) -> tuple[int, int]:
    with open(os.path.join(features, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    return int(manifest["image_dim"]), int(manifest["text_dim"])


def captions_per_image(features: str) -> float:
    with open(os.path.join(features, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    return manifest["num_captions"] / manifest["num_images"]


def has_torch(python: str) -> bool:
    return subprocess.run([python, "-c", "import torch, h5py"], capture_output=True, check=False).returncode == 0


def authors_runs(seeds: list[int], bits: int, part: str) -> dict[int, dict]:
    """The authors' code per seed ({} where torch is missing), as metrics-like dicts."""
    if part != "test":
        return {}
    if not has_torch(FLAGS.authors_python):
        print(f"--- {AUTHORS}: {FLAGS.authors_python} cannot import torch and h5py; left out", flush=True)
        return {}
    from benchmarks import authors_duch  # pylint: disable=import-outside-toplevel

    runs = {}
    for seed in seeds:
        out = os.path.join(FLAGS.out, part, f"{AUTHORS}_{bits}", f"seed{seed}")
        result = authors_duch.run_authors_duch(FLAGS.data_dir, FLAGS.features, seed, bits, FLAGS.epochs, out,
                                               python=FLAGS.authors_python)
        if not (result.get("split_matches") and result.get("captions_match")):
            raise RuntimeError(f"{out}: the authors' code did not train on rs_hashing's split and captions "
                               f"(split_matches={result.get('split_matches')}, "
                               f"captions_match={result.get('captions_match')})")
        runs[seed] = {"map@20": result.get("map@20") or {"i2t": result["i2t"], "t2i": result["t2i"]},
                      "map@20_continuous": result.get("map@20_continuous", {}),
                      "process": {k: result.get(k) for k in ("wall_s", "cpu_s", "peak_rss_mb")}}
    return runs


def summary_table(results: dict[str, dict[int, dict]], how: dict[str, str]) -> str:
    lines = ["| run | how its settings were chosen | seeds | I->T | T->I | I->I | T->T | I->T continuous "
             "| T->I continuous | wall s | peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        maps = [seeded_runs.cell(seeded_runs.collect(runs, lambda m, t=t: m["map@20"][t])) for t in TASKS]
        cont = [seeded_runs.cell(seeded_runs.collect(runs, lambda m, t=t: m["map@20_continuous"][t]))
                for t in ("i2t", "t2i")]
        wall = seeded_runs.cell(seeded_runs.collect(runs, lambda m: m["process"]["wall_s"]), 0)
        peak = seeded_runs.cell(seeded_runs.collect(runs, lambda m: m["process"]["peak_rss_mb"]), 0)
        lines.append(f"| {name} | {how.get(name, '')} | {len(runs)} | {' | '.join(maps)} | {' | '.join(cont)} "
                     f"| {wall} | {peak} |")
    return "\n".join(lines)


def per_seed_table(results: dict[str, dict[int, dict]]) -> str:
    lines = ["| run | seed | I->T | T->I | I->T continuous | T->I continuous | wall s | CPU s | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        for seed, m in sorted(runs.items()):
            cont = m.get("map@20_continuous", {})
            p = m.get("process", {})
            fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
            lines.append(f"| {name} | {seed} | {fmt(m['map@20']['i2t'])} | {fmt(m['map@20']['t2i'])} "
                         f"| {fmt(cont.get('i2t'))} | {fmt(cont.get('t2i'))} | {fmt(p.get('wall_s'), 0)} "
                         f"| {fmt(p.get('cpu_s'), 0)} | {fmt(p.get('peak_rss_mb'), 0)} |")
    return "\n".join(lines)


def speed_lines(results: dict[str, dict[int, dict]], flops: dict[str, float], peak: float) -> list[str]:
    lines = [f"This CPU's fp32 matmul rate on the heads' first-layer shape, measured in this run: {peak:.1f} GFLOP/s "
             f"({os.cpu_count()} cores)."]
    for name, runs in results.items():
        # The authors' runs of the same code length (rows are named `<run>_<bits>`).
        authors_wall = seeded_runs.collect(results.get(f"{AUTHORS}_{name.rsplit('_', 1)[-1]}", {}),
                                           lambda m: m["process"]["wall_s"])
        walls = seeded_runs.collect(runs, lambda m: m["process"]["wall_s"])
        if not walls:
            continue
        mean_wall, _ = seeded_runs.mean_sd(walls)
        line = f"- {name}: wall {seeded_runs.cell(walls, 0)} s"
        cpu = seeded_runs.collect(runs, lambda m: m["process"]["cpu_s"])
        peak_mb = seeded_runs.collect(runs, lambda m: m["process"]["peak_rss_mb"])
        line += f", CPU {seeded_runs.cell(cpu, 0)} s, peak {seeded_runs.cell(peak_mb, 0)} MB"
        if any("frozen_stage" in m for m in runs.values()):
            frozen_s = seeded_runs.collect(runs, lambda m: m["frozen_stage"]["train_seconds"])
            tuned_s = seeded_runs.collect(runs, lambda m: m["train_seconds"])
            line += (f"; in training: frozen stage {seeded_runs.cell(frozen_s, 0)} s, tuned stage "
                     f"{seeded_runs.cell(tuned_s, 0)} s")
        if name in flops:
            train_s = seeded_runs.collect(runs, lambda m: m["train_seconds"])
            mean_train = seeded_runs.mean_sd(train_s)[0] if train_s else mean_wall
            line += (f", {flops[name] / 1e12:.1f} TFLOP of matmuls, {flops[name] / mean_train / 1e9:.1f} GFLOP/s "
                     f"over its training seconds ({100 * flops[name] / mean_train / 1e9 / peak:.0f}% of the measured "
                     "rate)")
        if authors_wall and not name.startswith(f"{AUTHORS}_"):
            line += f"; {mean_wall / seeded_runs.mean_sd(authors_wall)[0]:.2f}x the authors' wall time"
        lines.append(line)
    return lines


def main(argv):
    del argv
    part = "validation" if FLAGS.validation else "test"
    names = list(FLAGS.runs)
    if FLAGS.validation and names == flags.FLAGS["runs"].default:
        names = CANDIDATES
    seeds = seeded_runs.seeds(FLAGS.seeds)
    base = config_lib.apply_overrides(config_lib.get_preset(FLAGS.preset), {
        "data_dir": FLAGS.data_dir, "features": FLAGS.features, "epochs": FLAGS.epochs})
    dims = store_dims(FLAGS.features)
    peak = matmul_gflops(base.train.batch_size, dims[0], base.model.hidden_dim)
    results, flops, how = {}, {}, {}
    for bits in (int(b) for b in FLAGS.bits):
        for name in names:
            label = f"{name}_{bits}"
            if name == AUTHORS:
                results[label] = authors_runs(seeds, bits, part)
                how[label] = "the authors' released code and settings, same features, splits and captions"
                continue
            runs = {}
            for seed in seeds:
                run_dir = os.path.join(FLAGS.out, part, label, f"seed{seed}")
                config = config_lib.apply_overrides(base, {
                    **run_overrides(name), **seeded_runs.seed_overrides(seed, FLAGS.validation),
                    "bits": bits, "run_dir": run_dir})
                runs[seed] = seeded_runs.train_or_reuse(config, FLAGS.preset)
            # Work per run: the same for every seed (same sizes); caption_mode="all_pairs"
            # trains every caption of a training image as its own pair.
            pairs = runs[seeds[-1]].get("sizes", {}).get("train", 5000)
            if config.train.caption_mode == "all_pairs":
                pairs *= captions_per_image(FLAGS.features)
            if not stages.is_two_stage(config):  # the heads' matmuls only: no encoder tops
                flops[label] = training_flops(dims, config, pairs)
            results[label] = runs
            how[label] = ("the papers' settings" if name in ("as_intended", "as_coded")
                          else f"the default: {DEFAULT_RUN}, then the image top at 10x for 10 epochs, chosen on the "
                          "validation split" if name == "default"
                          else "the default's frozen stage, chosen on the validation split" if name == DEFAULT_RUN
                          else "a candidate")
    text = [f"DUCH, RSICD-AID, mAP@20 (authors' definition) on the {part} split, mean +- sd over seeds "
            f"{', '.join(map(str, seeds))}; continuous = ranking by the cosine of the heads' outputs before the "
            "sign.", "", summary_table(results, how), "", "Per seed:", "", per_seed_table(results), "",
            "Speed (each run in its own process, back to back on this machine):", "",
            *speed_lines(results, flops, peak)]
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, "validation.md" if FLAGS.validation else "results.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    app.run(main)
