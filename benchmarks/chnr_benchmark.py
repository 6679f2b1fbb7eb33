r"""DUCH and CHNR on RSICD-AID with wrongly paired training captions, 64 bits.

    python -m benchmarks.chnr_benchmark --data_dir=../shared/data/rsicd \
        --features=/path/to/rsicd_store --out=runs/chnr_benchmark

For each noise rate p in --noise_rates (0, 0.1, ..., 0.5) it trains DUCH (--epochs, the
papers' 100) and CHNR (--phase1_epochs + --phase2_epochs, the paper's 75 + 75) on the
same corrupted training set: each pair's caption is replaced with probability p by the
caption of a training image of another class, and a fixed --clean_fraction (20%) is never
corrupted, for both methods (CHNR's trusted subset). Each run is an ordinary
`train.train` run folder under --out (`duch_noise0.3`, `chnr_noise0.3`, ...); finished
runs are reused, so a killed benchmark resumes. Writes

    results.md            mAP@20 (authors' definition) per noise rate and method, the
                          detector's ROC-AUC, realised noise rates, and the done-when checks
    map_vs_noise.png      mAP@20 against p, image->text and text->image, with the published
                          RSICD curves (CHNR threshold weights, DUCH on noisy data) dashed
                          at their own p grid (.05 .1 .2 .3 .4 .5; other features and the
                          full RSICD: a reference, not a like-for-like figure)

At p = 0 nothing is corrupted and DUCH trains exactly as the DUCH benchmark's
`as_intended_64` run; --duch_clean_run=runs/duch_benchmark/as_intended_64 reuses that run
(after checking that its config differs only in paths and the unused noise fields)
instead of training it again. --report_only trains nothing and reports the finished runs
(the others show as "-").

--set key=value overrides any other config field (e.g. for a quick check on a tiny
store: --preset=smoke --set=dataset=karpathy,caption_file=...,batch_size=8).
"""

import ast
import json
import os

import keras
import tensorflow as tf
from absl import app, flags

from rs_hashing import config as config_lib
from rs_hashing import plots
from rs_hashing.training import chnr_trainer, trainer

flags.DEFINE_string("preset", "rsicd", "Base configuration.")
flags.DEFINE_string("data_dir", None, "RSICD-AID folder.", required=True)
flags.DEFINE_string("features", None, "Feature store of RSICD-AID.", required=True)
flags.DEFINE_string("out", "runs/chnr_benchmark", "Folder for the runs and the results.")
flags.DEFINE_list("noise_rates", ["0", "0.1", "0.2", "0.3", "0.4", "0.5"], "Noise rates p.")
flags.DEFINE_list("methods", ["duch", "chnr"], "Methods to run.")
flags.DEFINE_integer("bits", 64, "Code length (the CHNR paper: 64).")
flags.DEFINE_integer("epochs", 100, "DUCH epochs (the papers': 100).")
flags.DEFINE_integer("phase1_epochs", 75, "CHNR epochs on the trusted clean subset.")
flags.DEFINE_integer("phase2_epochs", 75, "CHNR epochs on the whole noisy training set.")
flags.DEFINE_float("clean_fraction", 0.2, "Share of training pairs never corrupted (CHNR's trusted subset).")
flags.DEFINE_enum("noise_weighting", "threshold", list(config_lib.NOISE_WEIGHTINGS), "CHNR's pair weights.")
flags.DEFINE_enum("chnr_loss", "chnr", list(config_lib.CHNR_LOSSES), "CHNR's loss set.")
flags.DEFINE_string("duch_clean_run", None,
                    "A finished DUCH run on clean pairs with the same settings, reused as DUCH at p = 0.")
flags.DEFINE_bool("report_only", False,
                  "Train nothing: write the table and plot from the runs that have finished.")
flags.DEFINE_list("set", [], "Extra config overrides, key=value (values parsed as Python literals).")
FLAGS = flags.FLAGS

# RSICD, 64 bits, mAP@20 at p = .05 .1 .2 .3 .4 .5 (METHOD.md, the authors' result files).
PUBLISHED_P = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
PUBLISHED = {
    "chnr": {"i2t": [0.786, 0.770, 0.739, 0.732, 0.718, 0.709], "t2i": [0.783, 0.782, 0.755, 0.747, 0.721, 0.719]},
    "duch": {"i2t": [0.785, 0.767, 0.724, 0.677, 0.605, 0.475], "t2i": [0.785, 0.784, 0.751, 0.706, 0.647, 0.540]},
}
TASKS = ("i2t", "t2i")
LABELS = {"duch": "DUCH", "chnr": "CHNR"}


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as a path or a name


def extra_overrides() -> dict:
    overrides = {}
    for item in FLAGS.set:
        if "=" not in item:
            raise app.UsageError(f"--set expects key=value items, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _literal(value.strip())
    return overrides


def run_name(method: str, noise_rate: float) -> str:
    return f"{method}_noise{noise_rate:g}"


def run_config(base: config_lib.Config, method: str, noise_rate: float, workdir: str) -> config_lib.Config:
    overrides = {"method": method, "noise_rate": noise_rate, "run_dir": workdir}
    if method == "chnr":
        overrides.update(noise_weighting=FLAGS.noise_weighting, chnr_loss=FLAGS.chnr_loss)
    return config_lib.apply_overrides(base, overrides)


def train_or_reuse(config: config_lib.Config, workdir: str) -> dict:
    metrics_path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(metrics_path):
        keras.utils.set_random_seed(config.train.seed)
        tf.config.experimental.enable_op_determinism()
        print(f"=== {os.path.basename(workdir)}", flush=True)
        if config.model.method == "chnr":
            chnr_trainer.train_chnr(config, verbose=0)
        else:
            trainer.train(config, verbose=0)
    with open(metrics_path, encoding="utf-8") as f:
        return json.load(f)


# Fields that may differ between a reused clean DUCH run and the one this benchmark would
# train: paths, the noise injection (nothing is corrupted at p = 0) and CHNR-only settings.
REUSE_IGNORED = {"data_dir", "features", "run_dir", "clean_fraction", "noise_rate", "noise_seed",
                 "noise_weighting", "chnr_loss", "detector_hidden", "detector_dropout", "detector_augmented_views",
                 "phase1_epochs", "phase2_epochs", "detector_learning_rate", "detector_weight_decay"}


def reuse_clean_duch(config: config_lib.Config, run_dir: str) -> dict:
    """metrics.json of `run_dir`, a finished DUCH run trained as `config` would be at p = 0."""
    if config.model.method != "duch" or config.data.noise_rate != 0:
        raise ValueError("only DUCH at noise rate 0 can reuse a clean run")
    theirs = config_lib.to_dict(config_lib.load_config(run_dir))
    differences = [f"{group}.{key}: {theirs[group][key]!r} there, {value!r} here"
                   for group, fields in config_lib.to_dict(config).items() for key, value in fields.items()
                   if key not in REUSE_IGNORED and theirs[group][key] != value]
    if differences:
        raise ValueError(f"--duch_clean_run={run_dir} was trained with other settings: " + "; ".join(differences))
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


def results_table(rates: list[float], results: dict) -> str:
    lines = ["| p | realised | DUCH I->T | DUCH T->I | CHNR I->T | CHNR T->I | CHNR-DUCH I->T | CHNR-DUCH T->I "
             "| detector ROC-AUC (unprotected) | threshold | DUCH s | CHNR s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    for p in rates:
        duch, chnr = results.get(("duch", p)), results.get(("chnr", p))
        maps = {m: (r["map@20"] if r else {}) for m, r in (("duch", duch), ("chnr", chnr))}
        realised = (chnr or duch or {}).get("realised_noise_rate", 0.0)
        detector = (chnr or {}).get("detector", {})
        gaps = [maps["chnr"][t] - maps["duch"][t] if maps["chnr"] and maps["duch"] else None for t in TASKS]
        if detector.get("roc_auc") is not None:
            auc = f"{cell(detector['roc_auc'])} ({cell(detector.get('roc_auc_unprotected'))})"
        else:
            auc = "n/a (no corrupted pairs)" if detector else "-"
        lines.append(
            f"| {p:g} | {realised:.3f} | {cell(maps['duch'].get('i2t'))} | {cell(maps['duch'].get('t2i'))} "
            f"| {cell(maps['chnr'].get('i2t'))} | {cell(maps['chnr'].get('t2i'))} | {cell(gaps[0], 3)} "
            f"| {cell(gaps[1], 3)} | {auc} | {cell(detector.get('threshold'))} "
            f"| {cell((duch or {}).get('train_seconds'), 0)} | {cell((chnr or {}).get('train_seconds'), 0)} |")
    return "\n".join(lines)


def done_when_checks(rates: list[float], results: dict) -> list[str]:
    """The targets at the highest noise rate: CHNR >= DUCH + 0.05 and >= 0.9 x CHNR at
    p = 0 in both directions; detector ROC-AUC >= 0.9."""
    high = max(rates)
    duch, chnr, clean = results.get(("duch", high)), results.get(("chnr", high)), results.get(("chnr", 0.0))
    checks = []
    for task in TASKS:
        if duch and chnr:
            gap = chnr["map@20"][task] - duch["map@20"][task]
            checks.append(f"- p={high:g} {task}: CHNR - DUCH = {gap:+.3f} (target >= +0.05): "
                          f"{'PASS' if gap >= 0.05 else 'FAIL'}")
        if chnr and clean:
            ratio = chnr["map@20"][task] / clean["map@20"][task]
            checks.append(f"- p={high:g} {task}: CHNR / CHNR(p=0) = {ratio:.3f} (target >= 0.90): "
                          f"{'PASS' if ratio >= 0.9 else 'FAIL'}")
    auc = (chnr or {}).get("detector", {}).get("roc_auc")
    if auc is not None:
        checks.append(f"- p={high:g} detector ROC-AUC on the noisy training pairs = {auc:.3f} (target >= 0.90): "
                      f"{'PASS' if auc >= 0.9 else 'FAIL'}")
    return checks


def plot_map_vs_noise(rates: list[float], results: dict, path: str) -> str:
    """Two panels (I->T, T->I): our DUCH and CHNR against p, published curves dashed."""
    plt = plots._pyplot()  # pylint: disable=protected-access
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = {"duch": "tab:blue", "chnr": "tab:red"}
    for ax, task in zip(axes, TASKS):
        for method in FLAGS.methods:
            xs = [p for p in rates if (method, p) in results]
            if xs:
                ax.plot(xs, [results[(method, p)]["map@20"][task] for p in xs], marker="o", color=colors[method],
                        label=f"{LABELS[method]} (ours)")
            ax.plot(PUBLISHED_P, PUBLISHED[method][task], linestyle="--", marker="x", alpha=0.7,
                    color=colors[method], label=f"{LABELS[method]} published (RSICD)")
        ax.set_title(plots.TASK_NAMES[task])
        ax.set_xlabel("noise rate p")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("mAP@20")
    fig.suptitle(f"RSICD-AID, {FLAGS.bits} bits, wrongly paired captions")
    return plots._save(fig, path)  # pylint: disable=protected-access


def main(argv):
    del argv
    base = config_lib.apply_overrides(config_lib.get_preset(FLAGS.preset), {
        "data_dir": FLAGS.data_dir, "features": FLAGS.features, "bits": FLAGS.bits, "epochs": FLAGS.epochs,
        "phase1_epochs": FLAGS.phase1_epochs, "phase2_epochs": FLAGS.phase2_epochs,
        "clean_fraction": FLAGS.clean_fraction, **extra_overrides()})
    rates = sorted(float(p) for p in FLAGS.noise_rates)
    unknown = set(FLAGS.methods) - set(LABELS)
    if unknown:
        raise app.UsageError(f"--methods: unknown {sorted(unknown)}; choose from duch, chnr")
    results = {}
    for p in rates:
        for method in FLAGS.methods:
            workdir = os.path.join(FLAGS.out, run_name(method, p))
            config = run_config(base, method, p, workdir)
            if method == "duch" and p == 0 and FLAGS.duch_clean_run:
                results[(method, p)] = reuse_clean_duch(config, FLAGS.duch_clean_run)
            elif FLAGS.report_only and not os.path.exists(os.path.join(workdir, "metrics.json")):
                print(f"--- {os.path.basename(workdir)}: not finished, left out (--report_only)", flush=True)
            else:
                results[(method, p)] = train_or_reuse(config, workdir)

    table = results_table(rates, results)
    checks = done_when_checks(rates, results)
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"mAP@20 (authors' definition), {FLAGS.bits} bits, papers' protocol; "
                f"clean_fraction {FLAGS.clean_fraction:g} never corrupted; CHNR weighting "
                f"{FLAGS.noise_weighting}, loss set {FLAGS.chnr_loss}\n\n")
        f.write(table + "\n\nDone-when checks:\n\n" + "\n".join(checks) + "\n")
    print(table)
    print("\n".join(checks))
    plot_map_vs_noise(rates, results, os.path.join(FLAGS.out, "map_vs_noise.png"))


if __name__ == "__main__":
    app.run(main)
