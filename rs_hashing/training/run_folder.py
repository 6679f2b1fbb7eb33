"""The rules of a run folder: one configuration per folder, from its first write on.

`start_run` writes config.json or refuses a folder that holds another run, `clear_run`
removes what a run wrote (`overwrite=True`), `check_feature_settings` refuses
features made with other encoder settings than the config's, and `check_tower_cut` a
store that caches the activations of another cut of the encoders (or features where the
config trains encoder tops).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from typing import Any

from rs_hashing import config as config_lib
from rs_hashing.errors import FeatureStoreError, RunConflictError
from rs_hashing.features.feature_store import MANIFEST, FeatureStore
from rs_hashing.features.image_pipeline import radiometry_of
from rs_hashing.training.checkpoints import _CHECKPOINT_ENTRY, _remove_if_empty

# The files a run writes into its folder (DUCH and CHNR), besides the checkpoint and
# TensorBoard folders: what `overwrite=True` removes, and nothing else.
RUN_FILES = ("config.json", "history.csv", "noise.json", "model.weights.h5", "model_config.json", "encoders.json",
             "metrics.json", "codes.npz", "pr_curves.json", "pr_curve.png", "training_curves.png",
             "detector.weights.h5", "detector_config.json", "detector_history.csv", "detector.json",
             "detector_scores.png")
CHECKPOINTS, TENSORBOARD = "checkpoints", "tensorboard"
# Config fields that say where things are, not what is trained: a run folder resumes
# when only these differ (a moved folder, another extraction batch size).
RUN_LOCATION_FIELDS = ("train.run_dir", "features.encode_batch_size")
# Manifest fields of a feature store (see `rs_hashing.features.extraction.ENCODER_INFO_KEYS`)
# that the run's config must agree with: HashingModel, export and index rebuild the
# encoders from config.json, so the heads must have been trained on these features.
FEATURE_SETTINGS = ("image_encoder", "image_weights", "image_size", "text_encoder", "text_pooling",
                    "sequence_length")


def _as_json(value: Any) -> Any:
    """`value` as JSON would give it back (tuples as lists), for comparing records."""
    return json.loads(json.dumps(value))


def check_feature_settings(store: FeatureStore, features: config_lib.FeatureConfig) -> None:
    """Refuses a store whose manifest records other encoder settings (`FEATURE_SETTINGS`,
    the radiometric contract) than `features`: the run's config.json would name encoders
    its heads never saw. Settings a manifest does not record (stores written by hand,
    older versions) cannot be checked and pass."""
    manifest = store.manifest
    wanted = {name: getattr(features, name) for name in FEATURE_SETTINGS}
    differences = []
    for name, value in wanted.items():
        if name in manifest and _as_json(manifest[name]) != _as_json(value):
            preposition = "at" if name in ("image_size", "sequence_length") else "with"
            differences.append(f"{name}: features made {preposition} {manifest[name]!r}, config says {value!r}")
    if isinstance(manifest.get("radiometry"), dict):
        made, configured = _as_json(manifest["radiometry"]), _as_json(radiometry_of(features).to_dict())
        for key in sorted(set(made) | set(configured)):
            if made.get(key) != configured.get(key):
                differences.append(f"radiometry.{key}: features made with {made.get(key)!r}, "
                                   f"config says {configured.get(key)!r}")
    if differences:
        raise FeatureStoreError(
            f"{os.path.join(store.path, MANIFEST)}: the features were made with other encoder settings than the "
            f"config: {'; '.join(differences)} (extract the features again with these settings, or train with the "
            "store's)")


def _describe_cut(stages: int, layers: int, dtype: str | None) -> str:
    if not stages and not layers:
        return "frozen features (image_trainable_stages=0, text_trainable_layers=0)"
    return (f"the activations of image_trainable_stages={stages}, text_trainable_layers={layers}"
            f"{f' in {dtype}' if dtype else ''}")


def check_tower_cut(store: FeatureStore, config: config_lib.Config) -> None:
    """Refuses a store made for another cut of the encoders than `config.model` asks
    for (`image_trainable_stages`, `text_trainable_layers`), or with another dtype of
    cached activations than `config.features.activation_dtype`; the message names both."""
    model = config.model
    wanted = (model.image_trainable_stages, model.text_trainable_layers)
    wanted_dtype = config.features.activation_dtype if any(wanted) else None
    made_dtype = (store.towers or {}).get("dtype")
    if store.cut() != wanted or made_dtype != wanted_dtype:
        raise FeatureStoreError(
            f"{os.path.join(store.path, MANIFEST)}: the store holds {_describe_cut(*store.cut(), made_dtype)}, but "
            f"the config trains on {_describe_cut(*wanted, wanted_dtype)}; extract the features again with these "
            "settings (rs-hashing extract-features with the same --image_trainable_stages, --text_trainable_layers "
            "and --activation_dtype), or train with the store's")


def config_differences(old: config_lib.Config, new: config_lib.Config) -> list[str]:
    """`section.field: old -> new` for every field (but `RUN_LOCATION_FIELDS`) that differs."""
    old_values, new_values = config_lib.to_dict(old), config_lib.to_dict(new)
    differences = []
    for section, fields in new_values.items():
        for name, value in fields.items():
            key = f"{section}.{name}"
            before = old_values.get(section, {}).get(name)
            if key not in RUN_LOCATION_FIELDS and _as_json(before) != _as_json(value):
                differences.append(f"{key}: {_show(before)} -> {_show(value)}")
    return differences


def _show(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else repr(value)


def _run_files_present(workdir: str) -> list[str]:
    """The names of the run files and folders (but config.json) that `workdir` holds."""
    names = [name for name in RUN_FILES if name != "config.json" and os.path.exists(os.path.join(workdir, name))]
    return names + [name for name in (CHECKPOINTS, TENSORBOARD) if os.path.isdir(os.path.join(workdir, name))]


def start_run(config: config_lib.Config, workdir: str | None = None, overwrite: bool = False) -> str:
    """The run folder (`workdir` or the config's), created, with config.json written
    (kept as it is when the run resumes).

    A folder that holds a run of another config (see `config_differences`) is refused
    before anything is written, and so is one with run files but no config.json; the
    same config resumes (`check_run_folder`). `overwrite` starts a fresh run instead: the
    previous run's files are removed first (`clear_run`).
    """
    workdir = check_run_folder(config, workdir, overwrite)
    config_path = os.path.join(workdir, "config.json")
    if overwrite:
        clear_run(workdir)
    os.makedirs(workdir, exist_ok=True)
    if not os.path.exists(config_path):  # A resumed run keeps its config.json as it is.
        config_lib.save_config(config, workdir)
    return workdir


def check_run_folder(config: config_lib.Config, workdir: str | None = None, overwrite: bool = False) -> str:
    """The run folder (`workdir` or the config's) if `config` may train there, writing
    nothing: a fresh folder, one of the same config (resumed), or any with `overwrite`.
    Raises `RunConflictError` for a folder of another config (naming each differing
    field) or with run files but no readable config.json."""
    workdir = workdir or config.train.run_dir
    if not workdir:
        raise ValueError("run_dir is empty: give the run folder (--run_dir)")
    config_path = os.path.join(workdir, "config.json")
    if overwrite:
        return workdir
    if os.path.exists(config_path):
        try:
            previous = config_lib.load_config(config_path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise RunConflictError(
                f"{config_path} cannot be read ({message}): the folder's run is unknown, so it is not resumed; "
                "give another --run_dir, or --overwrite to start a fresh run here") from None
        differences = config_differences(previous, config)
        if differences:
            raise RunConflictError(
                f"{config_path}: the folder holds a run of another configuration ({'; '.join(differences)}); a run "
                "folder is not changed once training started: give another --run_dir, or --overwrite to start a "
                "fresh run here")
    elif os.path.isdir(workdir) and _run_files_present(workdir):
        raise RunConflictError(
            f"{workdir}: holds run files ({', '.join(_run_files_present(workdir))}) but no config.json, so whose "
            "run they are is unknown: give another --run_dir, or --overwrite to start a fresh run here")
    return workdir


def _temporary_files(folder: str, name: str) -> list[str]:
    """Temporary files that an interrupted atomic write of `folder/name` left behind."""
    return glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp*"))


def clear_run(workdir: str) -> None:
    """Removes the files a run writes from `workdir` (`RUN_FILES`, the checkpoint files,
    the TensorBoard event files, temporary files of interrupted writes), config.json
    last, so that a folder interrupted while being cleared still refuses a new config.
    Other files are left, and so are folders that still hold them."""
    if not os.path.isdir(workdir):
        return
    checkpoints = os.path.join(workdir, CHECKPOINTS)
    if os.path.isdir(checkpoints):
        for entry in os.listdir(checkpoints):
            path = os.path.join(checkpoints, entry)
            if re.fullmatch(_CHECKPOINT_ENTRY, entry):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)  # A TensorFlow save interrupted mid-way: ckpt-N_temp/.
                else:
                    os.remove(path)
        _remove_if_empty(checkpoints)
    tensorboard = os.path.join(workdir, TENSORBOARD)
    if os.path.isdir(tensorboard):
        for folder, _, files in os.walk(tensorboard, topdown=False):
            for name in files:
                if name.startswith("events.out.tfevents."):
                    os.remove(os.path.join(folder, name))
            _remove_if_empty(folder)
    for name in RUN_FILES:
        for path in _temporary_files(workdir, name):
            os.remove(path)
    for name in (*[n for n in RUN_FILES if n != "config.json"], "config.json"):
        path = os.path.join(workdir, name)
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
