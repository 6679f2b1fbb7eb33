"""One configuration trained over several seeds, each run in its own process, reported
as mean +- standard deviation.

Seed s changes everything the protocol draws at random: the train / query / database
split (`split_seed`), the caption picked per image (`caption_seed`), the caption noise
(`noise_seed`), the initialisation and batch order (`train.seed`), and, for a
validation run, the validation split carved from the training images (`val_seed`).
The authors' code draws its split and captions from one seed the same way
(`benchmarks.authors_duch`), so the same s gives both codes the same split.

Each run is `python -m rs_hashing train` in a child process with the config's fields as
flags; wall time, CPU time and peak memory (`ru_maxrss`) of that child are written to
`process.json` beside the run's `metrics.json`. Finished runs are reused, so a killed
benchmark resumes where it stopped, but only when their recorded config is the one asked
for (`reuse_differences`): a run left by an older benchmark or another setting is
refused by name, never counted as this one.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterable

from rs_hashing import config as config_lib
from rs_hashing.atomic_files import write_json_atomic
from rs_hashing.training import stages

FIRST_SEED = 42
VALIDATION_FRACTION = 0.2
PROCESS_FILE = "process.json"


def seeds(count: int, first: int = FIRST_SEED) -> list[int]:
    """`count` consecutive seeds from `first` (42: the papers' split is the first)."""
    if count < 1:
        raise ValueError(f"--seeds={count}: give at least one seed")
    return list(range(first, first + count))


def seed_overrides(seed: int, validation: bool = False) -> dict[str, Any]:
    """Config overrides of one seed (module docstring); `validation` adds the
    validation split (20% of the training images, drawn with the same seed)."""
    overrides = {"split_seed": seed, "caption_seed": seed, "noise_seed": seed, "train.seed": seed}
    if validation:
        overrides.update(val_fraction=VALIDATION_FRACTION, val_seed=seed)
    return overrides


def _changed_fields(config: config_lib.Config, base: config_lib.Config) -> list[tuple[str, Any]]:
    """(field, value) of every field where `config` differs from `base` (None: unset)."""
    new, old = config_lib.to_dict(config), config_lib.to_dict(base)
    return [(name, value) for section, fields in new.items() for name, value in fields.items()
            if value != old[section][name] and value is not None]


def child_config(config: config_lib.Config, preset: str) -> config_lib.Config:
    """The config the child run records: `config` with the method's defaults filled in
    where its flags leave a field at the preset's value (`config_lib.config_from_flags`),
    e.g. CHNR's third learning-rate step."""
    given = {name for name, _ in _changed_fields(config, config_lib.get_preset(preset))}
    return config_lib.apply_method_defaults(config, given=given)


def config_flags(config: config_lib.Config, base: config_lib.Config) -> list[str]:
    """`--field=value` for every field where `config` differs from `base`."""
    flags = []
    for name, value in _changed_fields(config, base):
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, (tuple, list)):
            flags.append(f"--{name}=" + ",".join(str(v) for v in value))
        else:
            flags.append(f"--{name}={value}")
    return flags


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# Where things are: a finished run may have been made from another working directory.
PATH_FIELDS = frozenset({"data_dir", "caption_file", "image_dir", "label_file", "features", "tuned_features",
                         "run_dir"})


def _last_folders(path: str, count: int = 2) -> list[str]:
    return os.path.normpath(path).split(os.sep)[-count:] if path else []


def reuse_differences(config: config_lib.Config, recorded: config_lib.Config,
                      also_ignored: Iterable[str] = ()) -> list[str]:
    """`section.field: recorded there, asked here` for every field in which a finished
    run's recorded config differs from `config`, leaving out paths (a warm start's
    source is compared by its last two folders, `<setting>/seed<s>`), the tops'
    learning-rate factor and tuned epochs of a run without trainable tops, and the tuned
    epochs of a continuation (`init_from`), which nothing reads, and the fields named in
    `also_ignored`."""
    ignored = set(PATH_FIELDS | {"init_from"} | set(also_ignored))
    if not (config.model.image_trainable_stages or config.model.text_trainable_layers):
        ignored.update({"tower_learning_rate_factor", "tuned_epochs"})
    if config.train.init_from:
        ignored.add("tuned_epochs")
    theirs, ours = config_lib.to_dict(recorded), config_lib.to_dict(config)
    differences = [f"{section}.{name}: {theirs[section][name]!r} there, {value!r} here"
                   for section, fields in ours.items() for name, value in fields.items()
                   if name not in ignored and theirs[section][name] != value]
    if _last_folders(recorded.train.init_from) != _last_folders(config.train.init_from):
        differences.append(f"train.init_from: {recorded.train.init_from!r} there, {config.train.init_from!r} here")
    return differences


def finished_differences(config: config_lib.Config, run_dir: str) -> list[str]:
    """`reuse_differences` of the finished run in `run_dir` against `config`; a
    two-stage config (`stages`) is compared stage by stage: its tuned stage with the
    folder's config.json, its frozen stage with `frozen/config.json`."""
    if not stages.is_two_stage(config):
        return reuse_differences(config, config_lib.load_config(run_dir))
    frozen, tuned = stages.stage_configs(config, run_dir)
    frozen_recorded = os.path.join(run_dir, stages.FROZEN_STAGE)
    if not os.path.exists(os.path.join(frozen_recorded, "config.json")):
        return [f"{frozen_recorded}: no frozen stage"]
    return (reuse_differences(tuned, config_lib.load_config(run_dir))
            + [f"frozen stage {d}" for d in reuse_differences(frozen, config_lib.load_config(frozen_recorded))])


def train_or_reuse(config: config_lib.Config, preset: str, python: str = sys.executable) -> dict:
    """metrics.json of the run `config` describes (its `train.run_dir`), trained first
    in a child process unless finished; the child's figures are added under "process".
    A finished run whose recorded config differs (`reuse_differences`) is refused."""
    run_dir = config.train.run_dir
    metrics_path = os.path.join(run_dir, "metrics.json")
    process_path = os.path.join(run_dir, PROCESS_FILE)
    if os.path.exists(metrics_path):
        differences = finished_differences(child_config(config, preset), run_dir)
        if differences:
            raise ValueError(f"{run_dir}: a finished run of other settings ({'; '.join(differences)}); move it "
                             "away or give another output folder")
    else:
        os.makedirs(run_dir, exist_ok=True)
        command = [python, "-m", "rs_hashing", "train", f"--preset={preset}", "--verbosity=-1",
                   *config_flags(config, config_lib.get_preset(preset))]
        print(f"=== {run_dir}", flush=True)
        started = time.perf_counter()
        with open(os.path.join(run_dir, "train.log"), "a", encoding="utf-8") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        exit_code = os.waitstatus_to_exitcode(status)
        if exit_code != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({exit_code}); see {run_dir}/train.log")
        write_json_atomic(process_path, {
            "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "command": command})
    return read_finished(run_dir)


def read_finished(run_dir: str) -> dict:
    """A finished run's metrics.json, the child's figures under "process" (as they are:
    no check of its settings)."""
    metrics = _read_json(os.path.join(run_dir, "metrics.json"))
    process_path = os.path.join(run_dir, PROCESS_FILE)
    metrics["process"] = _read_json(process_path) if os.path.exists(process_path) else {}
    return metrics


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: list[float], digits: int = 3) -> str:
    """`mean +- sd` of a row's per-seed values ("-" when none)."""
    if not values:
        return "-"
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f} +- {sd:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def collect(runs: dict[int, dict], getter: Callable[[dict], float | None]) -> list[float]:
    """The values `getter` finds in each seed's metrics (missing ones left out)."""
    values = []
    for metrics in runs.values():
        try:
            value = getter(metrics)
        except (KeyError, TypeError):
            value = None
        if value is not None:
            values.append(float(value))
    return values
