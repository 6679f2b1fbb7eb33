r"""DUCH and CHNR on RSICD-AID with wrongly paired training captions, 64 bits.

    python -m benchmarks.chnr_benchmark --data_dir=../shared/data/rsicd \
        --features=/path/to/rsicd_store --out=runs/chnr_benchmark

For each noise rate p in --noise_rates (0, 0.1, ..., 0.5) and each of --seeds seeds
(`benchmarks.seeded_runs`: the seed draws the split, the captions, the noise and the
initialisation) it trains DUCH (--epochs, the papers' 100) and CHNR (--phase1_epochs +
--phase2_epochs, the paper's 75 + 75) on the same corrupted training set: each pair's caption is replaced with probability p by the
caption of a training image of another class, and a fixed --clean_fraction (20%) is never
corrupted, for both methods (CHNR's trusted subset). Each run is an ordinary
`rs-hashing train` run folder under --out (`duch_noise0.3/seed42`, ...), trained in its
own process; finished runs are reused, so a killed benchmark resumes. Writes

    results.md            mAP@20 (authors' definition) per noise rate and method, mean
                          +- sd over the seeds, the detector's ROC-AUC, realised noise
                          rates, the done-when checks on the means, and per-seed values
    map_vs_noise.png      mAP@20 against p, image->text and text->image, with the published
                          RSICD curves (CHNR threshold weights, DUCH on noisy data) dashed
                          at their own p grid (.05 .1 .2 .3 .4 .5; other features and the
                          full RSICD: a reference, not a like-for-like figure)

At p = 0 nothing is corrupted and DUCH trains exactly as the DUCH benchmark's `default`
runs; --duch_clean_run=runs/duch_benchmark/test/default_64 reuses its `seed<s>` runs
(after checking that each config differs only in paths and the unused noise fields)
instead of training them again. --report_only trains nothing and reports the finished runs
(the others show as "-").

--set key=value overrides any other config field (e.g. for a quick check on a tiny
store: --preset=smoke --set=dataset=karpathy,caption_file=...,batch_size=8).
"""

import ast
import json
import os

from absl import app, flags

from benchmarks import seeded_runs
from rs_hashing import config as config_lib
from rs_hashing import plots

flags.DEFINE_string("preset", "rsicd", "Base configuration.")
flags.DEFINE_string("data_dir", None, "RSICD-AID folder.", required=True)
flags.DEFINE_string("features", None, "Feature store of RSICD-AID.", required=True)
flags.DEFINE_string("out", "runs/chnr_benchmark", "Folder for the runs and the results.")
flags.DEFINE_integer("seeds", 3, "Number of seeds (42, 43, ...).")
flags.DEFINE_list("noise_rates", ["0", "0.1", "0.2", "0.3", "0.4", "0.5"], "Noise rates p.")
flags.DEFINE_list("methods", ["duch", "chnr"], "Methods to run.")
flags.DEFINE_integer("bits", 64, "Code length (the CHNR paper: 64).")
flags.DEFINE_integer("epochs", 100, "DUCH epochs (the papers': 100).")
flags.DEFINE_integer("phase1_epochs", 75, "CHNR epochs on the trusted clean subset.")
flags.DEFINE_integer("phase2_epochs", 75, "CHNR epochs on the whole noisy training set.")
flags.DEFINE_float("clean_fraction", 0.2, "Share of training pairs never corrupted (CHNR's trusted subset).")
flags.DEFINE_enum("caption_mode", "one", list(config_lib.CAPTION_MODES),
                  "Captions trained on (both papers: one per image, the protocol's draw).")
flags.DEFINE_enum("noise_weighting", "threshold", list(config_lib.NOISE_WEIGHTINGS), "CHNR's pair weights.")
flags.DEFINE_enum("chnr_loss", "chnr", list(config_lib.CHNR_LOSSES), "CHNR's loss set.")
flags.DEFINE_string("duch_clean_run", None,
                    "A folder of finished DUCH runs on clean pairs with the same settings, one seed<s> folder per "
                    "seed, reused as DUCH at p = 0.")
flags.DEFINE_bool("report_only", False,
                  "Train nothing: write the table and plot from the runs that have finished (as they "
                  "are: their settings are not checked).")
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


# Fields that may differ between a reused clean DUCH run and the one this benchmark would
# train, besides paths (`seeded_runs.reuse_differences`): the noise injection (nothing is
# corrupted at p = 0) and CHNR-only settings.
REUSE_IGNORED = {"clean_fraction", "noise_rate", "noise_seed", "noise_weighting", "chnr_loss", "detector_hidden",
                 "detector_dropout", "detector_augmented_views", "phase1_epochs", "phase2_epochs",
                 "detector_learning_rate", "detector_weight_decay"}


def reuse_clean_duch(config: config_lib.Config, run_dir: str) -> dict:
    """metrics.json of `run_dir`, a finished DUCH run trained as `config` would be at p = 0."""
    if config.model.method != "duch" or config.data.noise_rate != 0:
        raise ValueError("only DUCH at noise rate 0 can reuse a clean run")
    differences = seeded_runs.reuse_differences(config, config_lib.load_config(run_dir), REUSE_IGNORED)
    if differences:
        raise ValueError(f"--duch_clean_run={run_dir} was trained with other settings: " + "; ".join(differences))
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


def _mean(runs: dict[int, dict] | None, getter) -> float | None:
    values = seeded_runs.collect(runs or {}, getter)
    return seeded_runs.mean_sd(values)[0] if values else None


def results_table(rates: list[float], results: dict) -> str:
    lines = ["| p | realised | DUCH I->T | DUCH T->I | CHNR I->T | CHNR T->I | CHNR-DUCH I->T | CHNR-DUCH T->I "
             "| detector ROC-AUC (unprotected) | threshold | DUCH s | CHNR s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    def spread(runs, getter, digits=3):
        return seeded_runs.cell(seeded_runs.collect(runs or {}, getter), digits)

    for p in rates:
        duch, chnr = results.get(("duch", p)), results.get(("chnr", p))
        realised = _mean(chnr or duch, lambda m: m.get("realised_noise_rate", 0.0)) or 0.0
        common = sorted(set(duch or {}) & set(chnr or {}))
        # Per seed, then mean +- sd, over the seeds both methods finished.
        gaps = [seeded_runs.cell([chnr[s]["map@20"][t] - duch[s]["map@20"][t] for s in common]) for t in TASKS]
        if _mean(chnr, lambda m: m["detector"]["roc_auc"]) is not None:
            auc_cell = (f"{spread(chnr, lambda m: m['detector']['roc_auc'])} "
                        f"({spread(chnr, lambda m: m['detector'].get('roc_auc_unprotected'))})")
        else:
            auc_cell = "n/a (no corrupted pairs)" if chnr else "-"
        lines.append(
            f"| {p:g} | {realised:.3f} | {spread(duch, lambda m: m['map@20']['i2t'])} "
            f"| {spread(duch, lambda m: m['map@20']['t2i'])} | {spread(chnr, lambda m: m['map@20']['i2t'])} "
            f"| {spread(chnr, lambda m: m['map@20']['t2i'])} | {gaps[0]} | {gaps[1]} | {auc_cell} "
            f"| {cell(_mean(chnr, lambda m: m['detector']['threshold']))} "
            f"| {cell(_mean(duch, lambda m: m['train_seconds']), 0)} "
            f"| {cell(_mean(chnr, lambda m: m['train_seconds']), 0)} |")
    return "\n".join(lines)


def per_seed_table(rates: list[float], results: dict) -> str:
    lines = ["| p | method | seed | I->T | T->I | I->T continuous | T->I continuous | detector ROC-AUC |",
             "|---|---|---|---|---|---|---|---|"]

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    for p in rates:
        for method in FLAGS.methods:
            for seed, m in sorted((results.get((method, p)) or {}).items()):
                cont = m.get("map@20_continuous", {})
                lines.append(f"| {p:g} | {LABELS[method]} | {seed} | {fmt(m['map@20']['i2t'])} "
                             f"| {fmt(m['map@20']['t2i'])} | {fmt(cont.get('i2t'))} | {fmt(cont.get('t2i'))} "
                             f"| {fmt((m.get('detector') or {}).get('roc_auc'))} |")
    return "\n".join(lines)


def done_when_checks(rates: list[float], results: dict) -> list[str]:
    """The targets at the highest noise rate, on the means over the seeds: CHNR >= DUCH
    + 0.05 and >= 0.9 x CHNR at p = 0 in both directions; detector ROC-AUC >= 0.9."""
    high = max(rates)
    duch, chnr, clean = results.get(("duch", high)), results.get(("chnr", high)), results.get(("chnr", 0.0))
    checks = []
    for task in TASKS:
        def value(runs, t=task):
            return _mean(runs, lambda m: m["map@20"][t])

        if duch and chnr:
            gap = value(chnr) - value(duch)
            checks.append(f"- p={high:g} {task}: CHNR - DUCH = {gap:+.3f} (target >= +0.05): "
                          f"{'PASS' if gap >= 0.05 else 'FAIL'}")
        if chnr and clean:
            ratio = value(chnr) / value(clean)
            checks.append(f"- p={high:g} {task}: CHNR / CHNR(p=0) = {ratio:.3f} (target >= 0.90): "
                          f"{'PASS' if ratio >= 0.9 else 'FAIL'}")
    auc = _mean(chnr, lambda m: m["detector"]["roc_auc"])
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
                means = [seeded_runs.mean_sd(seeded_runs.collect(results[(method, p)], lambda m: m["map@20"][task]))
                         for p in xs]
                ax.errorbar(xs, [m for m, _ in means], yerr=[sd for _, sd in means], marker="o", capsize=3,
                            color=colors[method], label=f"{LABELS[method]} (ours, mean +- sd)")
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
    # Both methods on frozen encoders, as the papers (DUCH's default tunes the image top after).
    base = config_lib.apply_overrides(config_lib.get_preset(FLAGS.preset), {
        "image_trainable_stages": 0,
        "data_dir": FLAGS.data_dir, "features": FLAGS.features, "bits": FLAGS.bits, "epochs": FLAGS.epochs,
        "phase1_epochs": FLAGS.phase1_epochs, "phase2_epochs": FLAGS.phase2_epochs,
        "clean_fraction": FLAGS.clean_fraction, "caption_mode": FLAGS.caption_mode, **extra_overrides()})
    rates = sorted(float(p) for p in FLAGS.noise_rates)
    unknown = set(FLAGS.methods) - set(LABELS)
    if unknown:
        raise app.UsageError(f"--methods: unknown {sorted(unknown)}; choose from duch, chnr")
    results = {}
    for p in rates:
        for method in FLAGS.methods:
            runs = {}
            for seed in seeded_runs.seeds(FLAGS.seeds):
                workdir = os.path.join(FLAGS.out, run_name(method, p), f"seed{seed}")
                config = config_lib.apply_overrides(run_config(base, method, p, workdir),
                                                    seeded_runs.seed_overrides(seed))
                if method == "duch" and p == 0 and FLAGS.duch_clean_run:
                    runs[seed] = reuse_clean_duch(config, os.path.join(FLAGS.duch_clean_run, f"seed{seed}"))
                elif FLAGS.report_only:
                    if os.path.exists(os.path.join(workdir, "metrics.json")):
                        runs[seed] = seeded_runs.read_finished(workdir)
                    else:
                        print(f"--- {workdir}: not finished, left out (--report_only)", flush=True)
                else:
                    runs[seed] = seeded_runs.train_or_reuse(config, FLAGS.preset)
            if runs:
                results[(method, p)] = runs

    table = results_table(rates, results)
    checks = done_when_checks(rates, results)
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"mAP@20 (authors' definition), {FLAGS.bits} bits, papers' protocol; "
                f"clean_fraction {FLAGS.clean_fraction:g} never corrupted; CHNR weighting "
                f"{FLAGS.noise_weighting}, loss set {FLAGS.chnr_loss}\n\n")
        f.write(table + "\n\nDone-when checks (means over the seeds):\n\n" + "\n".join(checks)
                + "\n\nPer seed:\n\n" + per_seed_table(rates, results) + "\n")
    print(table)
    print("\n".join(checks))
    plot_map_vs_noise(rates, results, os.path.join(FLAGS.out, "map_vs_noise.png"))


if __name__ == "__main__":
    app.run(main)
