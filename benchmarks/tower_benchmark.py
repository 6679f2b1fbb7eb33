"""Frozen vs fine-tuned encoder tops (tower mode) on RSICD-AID, over seeds.

On this CPU a training step with a trainable encoder top costs several times a
frozen one (`benchmarks.tower_step_benchmark`), so the tops are tuned where it pays: a
DUCH run on frozen features (the DUCH benchmark's 64-bit run of the same seed, of its
setting `--source`, `as_intended` by default) is continued for `--tuned_epochs` with the tops trainable (`train --init_from`), and
compared with the same continuation on frozen features (the control: as many more
epochs, nothing tuned). Each row is mean +- sd over seeds; a seed's frozen source run
must exist (`python -m benchmarks.duch_benchmark --seeds=N --runs=as_intended
[--validation]`)::

    python -m benchmarks.tower_benchmark --data_dir=../shared/data/rsicd \\
        --stores=frozen:feats/rsicd,image1:feats/rsicd_image1 --runs=frozen,image1 --seeds=3 \\
        --tower_learning_rate_factors=1,10

Reported per row: mAP@20 in the four directions and ranked by the continuous outputs,
1-NN scene accuracy of the image tower's features (query images against the database
images by cosine; the frozen encoder's for the frozen rows), the wall time of source
plus continuation against the frozen 100-epoch source, and each store's size and
extraction time; a tuned setting runs once per tops' learning-rate factor
(`--tower_learning_rate_factors`, its folder and row named `<setting>_lr<factor>_+<epochs>`).
`--validation` uses the validation-split sources and reports
validation mAP (for choosing the epochs and the settings).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from absl import app, flags

from benchmarks import seeded_runs
from rs_hashing import config as config_lib

FLAGS = flags.FLAGS

SETTINGS = {
    "frozen": {},
    "image1": {"image_trainable_stages": 1},
    "image2": {"image_trainable_stages": 2},
    "text1": {"text_trainable_layers": 1},
    "both1": {"image_trainable_stages": 1, "text_trainable_layers": 1},
}
TASKS = ("i2t", "t2i", "i2i", "t2t")


def parse_stores(entries: list[str]) -> dict[str, str]:
    stores = {}
    for entry in entries:
        name, _, path = entry.partition(":")
        if name not in SETTINGS or not path:
            raise app.UsageError(f"--stores: {entry!r} is not name:folder with a name of {', '.join(SETTINGS)}")
        stores[name] = path
    return stores


_RETRIEVAL_IMAGES: dict = {}


def retrieval_images(config: config_lib.Config) -> dict:
    """The store's query and database image rows and labels under the config's split,
    read once per store and split for all the runs that share them."""
    from rs_hashing.data.loaders import load_dataset  # pylint: disable=import-outside-toplevel
    from rs_hashing.data.protocol_split import ProtocolSplit  # pylint: disable=import-outside-toplevel
    from rs_hashing.features.feature_store import FeatureStore  # pylint: disable=import-outside-toplevel
    from rs_hashing.training import evaluation  # pylint: disable=import-outside-toplevel

    key = (os.path.abspath(config.features.features),
           json.dumps(dataclasses.asdict(config.data), sort_keys=True, default=str))
    if key not in _RETRIEVAL_IMAGES:
        dataset = load_dataset(config.data, check_images=False)
        store = FeatureStore.open(config.features.features, dataset, check_values=False)
        features = evaluation.retrieval_features(store, ProtocolSplit.for_dataset(dataset, config.data))
        _RETRIEVAL_IMAGES[key] = {name: features[name] for name in
                                  ("query_image", "database_image", "query_labels", "database_labels")}
    return _RETRIEVAL_IMAGES[key]


def run_name(setting: str, factor: float, epochs: int) -> str:
    """A continuation's row and folder name: the control `frozen_+E` has no tops, a tuned
    setting names its tops' learning-rate factor (`image1_lr10_+10`), so that runs of
    other factors never pass for each other."""
    return f"frozen_+{epochs}" if setting == "frozen" else f"{setting}_lr{factor:g}_+{epochs}"


def one_nn_accuracy(run_dir: str, config: config_lib.Config) -> float:
    """Scene accuracy of each query image's nearest database image by the cosine of the
    image encoder's features: the tuned top's when the run has one, else the store's."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from rs_hashing.hashing_model import HashingModel  # pylint: disable=import-outside-toplevel

    features = retrieval_images(config)
    tower = HashingModel.from_run(run_dir, check_encoders=False).heads.image_tower
    vectors = {}
    for part in ("query", "database"):
        rows = features[f"{part}_image"]
        if tower is not None:
            rows = np.concatenate([np.asarray(tower(tf.cast(rows[i:i + 256], tf.float32), training=False))
                                   for i in range(0, len(rows), 256)])
        rows = np.asarray(rows, np.float32)
        vectors[part] = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    nearest = np.argmax(vectors["query"] @ vectors["database"].T, axis=1)
    return float(np.mean(features["database_labels"][nearest] == features["query_labels"]))


def untuned_map(source: str, config: config_lib.Config) -> dict:
    """mAP@20 of the frozen source run's heads on a tower store, through the tops at
    their pretrained weights: the source's own mAP when the store's cached activations
    (float16 by default) lose nothing that matters."""
    from rs_hashing.training import evaluation, run_kit  # pylint: disable=import-outside-toplevel

    config = config_lib.apply_overrides(config, {"init_from": source})
    data = run_kit.prepare(config)
    model, _ = run_kit.warm_model(config, data, len(data.split.train), run_kit.encoder_tops(config, data.store),
                                  batch_size=1, compile_for_training=False)
    return evaluation.evaluate_model(model, data.store, data.split)[0]["map@20"]


def store_figures(path: str) -> tuple[float, float | None]:
    """(size in MB, extraction seconds from its manifest)."""
    size = sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path)
               if os.path.isfile(os.path.join(path, name)))
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
        seconds = json.load(f).get("extraction", {}).get("seconds")
    return size / 2 ** 20, seconds


def define_flags() -> None:
    """The command's flags (defined only when run as a command, so that tests can import
    this module beside other benchmarks)."""
    flags.DEFINE_string("data_dir", None, "RSICD-AID folder.", required=True)
    flags.DEFINE_list("stores", ["frozen:feats/rsicd"], "name:folder of each setting's feature store (the setting's "
                      "cut: frozen, image1, text1, both1).")
    flags.DEFINE_list("runs", ["frozen", "image1"], "Settings to run (each needs its store).")
    flags.DEFINE_string("sources", "runs/duch_benchmark", "The DUCH benchmark's output folder (frozen source runs: "
                        "<sources>/<test|validation>/<source>_64/seed<s>).")
    flags.DEFINE_string("source", "as_intended", "The DUCH benchmark's setting whose runs are continued "
                        "(as_intended, as_intended_random, ...); the continuations keep its settings.")
    flags.DEFINE_string("out", "runs/tower_benchmark", "Folder for the runs and the results.")
    flags.DEFINE_integer("seeds", 3, "Number of seeds (42, 43, ...).")
    flags.DEFINE_integer("tuned_epochs", 10, "Epochs of the continuation.")
    flags.DEFINE_list("tower_learning_rate_factors", None, "The tops' learning-rate factors to run, each a row "
                      "(default: the configuration's).")
    flags.DEFINE_bool("validation", False, "Validation-split sources and validation mAP.")


def main(argv):
    del argv
    stores = parse_stores(FLAGS.stores)
    missing = [name for name in FLAGS.runs if name not in stores]
    if missing:
        raise app.UsageError(f"--runs {', '.join(missing)}: no store given in --stores")
    split_name = "validation" if FLAGS.validation else "test"
    factors = [float(f) for f in FLAGS.tower_learning_rate_factors or
               [config_lib.Config().train.tower_learning_rate_factor]]
    plan = [(name, factor) for name in FLAGS.runs for factor in ([None] if name == "frozen" else factors)]
    rows = {"frozen_100": {}}
    rows.update({run_name(name, factor, FLAGS.tuned_epochs): {} for name, factor in plan})
    nn = {name: [] for name in rows}
    untuned = {}  # the source's heads through each store's untuned tops
    for seed in seeded_runs.seeds(FLAGS.seeds):
        source = os.path.join(FLAGS.sources, split_name, f"{FLAGS.source}_64", f"seed{seed}")
        if not os.path.exists(os.path.join(source, "metrics.json")):
            raise app.UsageError(f"{source}: no finished frozen source run; train it with `python -m "
                                 f"benchmarks.duch_benchmark --seeds={FLAGS.seeds} --runs={FLAGS.source}"
                                 f"{' --validation' if FLAGS.validation else ''}`")
        # Its recorded run folder may be relative to another working directory.
        base = config_lib.apply_overrides(config_lib.load_config(source), {"run_dir": source})
        rows["frozen_100"][seed] = seeded_runs.train_or_reuse(base, "rsicd")
        base = config_lib.apply_overrides(base, {"data_dir": FLAGS.data_dir, "features": stores["frozen"]})
        nn["frozen_100"].append(one_nn_accuracy(source, base))
        for name in FLAGS.runs:
            if name != "frozen":
                store_config = config_lib.apply_overrides(base, dict(SETTINGS[name], features=stores[name]))
                untuned.setdefault(name, []).append(untuned_map(source, store_config))
        for name, factor in plan:
            key = run_name(name, factor, FLAGS.tuned_epochs)
            overrides = dict(SETTINGS[name], features=stores[name], init_from=source, epochs=FLAGS.tuned_epochs,
                             run_dir=os.path.join(FLAGS.out, split_name, key, f"seed{seed}"))
            if factor is not None:
                overrides["tower_learning_rate_factor"] = factor
            config = config_lib.apply_overrides(base, overrides)
            # A finished run of another source or factor is refused (`seeded_runs.reuse_differences`).
            rows[key][seed] = seeded_runs.train_or_reuse(config, "rsicd")
            nn[key].append(one_nn_accuracy(config.train.run_dir, config))

    cell, collect = seeded_runs.cell, seeded_runs.collect
    frozen_wall = collect(rows["frozen_100"], lambda m: m["process"]["wall_s"])
    lines = [f"Tower mode on RSICD-AID, 64 bits, {split_name} mAP@20 (authors' definition), mean +- sd over seeds "
             f"{', '.join(str(s) for s in rows['frozen_100'])}. Rows `<setting>_lr<factor>_+{FLAGS.tuned_epochs}` "
             f"continue the frozen 100-epoch `{FLAGS.source}` run of the same seed for {FLAGS.tuned_epochs} epochs (`train "
             "--init_from`), the tops at <factor> times the heads' learning rate; "
             "`frozen_+N` is the control (as many more epochs, nothing tuned).", "",
             "| run | I->T | T->I | I->I | T->T | I->T continuous | T->I continuous | 1-NN image accuracy | "
             "wall s (with source) | x frozen 100 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        maps = [cell(collect(runs, lambda m, t=t: m["map@20"][t])) for t in TASKS]
        continuous = [cell(collect(runs, lambda m, t=t: m["map@20_continuous"][t])) for t in ("i2t", "t2i")]
        walls = collect(runs, lambda m: m["process"]["wall_s"])
        if name != "frozen_100":
            walls = [w + f for w, f in zip(walls, frozen_wall)]
        ratio = (cell([w / f for w, f in zip(walls, frozen_wall)], 2) if name != "frozen_100" else "1")
        lines.append(f"| {name} | {' | '.join(maps)} | {' | '.join(continuous)} | {cell(nn[name])} | "
                     f"{cell(walls, 0)} | {ratio} |")
    lines += ["", "Per seed I->T / T->I:", ""]
    for name, runs in rows.items():
        lines.append(f"- {name}: " + "; ".join(f"{s}: {m['map@20']['i2t']:.3f} / {m['map@20']['t2i']:.3f}"
                                               for s, m in runs.items()))
    lines += ["", "The frozen runs' heads through each tower store's cached activations and its tops at their "
              "pretrained weights (what the cache's dtype costs before any tuning), against the frozen runs' own "
              "mAP:", ""]
    frozen_maps = [cell(collect(rows["frozen_100"], lambda m, t=t: m["map@20"][t])) for t in TASKS]
    lines.append(f"- frozen features: {' / '.join(frozen_maps)} (I->T / T->I / I->I / T->T)")
    for name, maps in untuned.items():
        lines.append(f"- {name} store, untuned: " + " / ".join(cell([m[t] for m in maps]) for t in TASKS))
    lines += ["", "Stores:", ""]
    for name, path in stores.items():
        size, seconds = store_figures(path)
        lines.append(f"- {name}: {path}, {size:.0f} MB" + (f", extracted in {seconds:.0f} s" if seconds else ""))
    text = "\n".join(lines) + "\n"
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, f"{split_name}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
