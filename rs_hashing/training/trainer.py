"""Trains a cross-modal hashing model from a feature store and evaluates it.

`train(config)` is the one library call behind `python -m train.train`. It writes into
the work directory:

    config.json            the resolved configuration
    checkpoints/           the last good epoch (model, both optimizers, epoch counter);
                           a killed run resumes here and ends as an uninterrupted one
    history.csv            loss terms, one row per epoch across resumes
    tensorboard/           TensorBoard logs
    noise.json             realised noise rate and corrupted pair indices (if any)
    model.weights.h5       final weights, with model_config.json to rebuild the model
    encoders.json          identity of the encoders that made the features (package,
                           version, weights fingerprint), checked when the run is loaded
    metrics.json           mAP@k (authors' and truncated), precision@k, wall time
    codes.npz              binary codes and labels of the query and database sets
    pr_curves.json, pr_curve.png, training_curves.png

A run folder belongs to one configuration from the moment training starts:

- `start_run` compares an existing config.json with the new config and refuses, before
  writing anything, a config that differs (`RunConflictError`, naming each differing
  field as `section.field: old -> new`). The same config resumes (a killed run ends as
  an uninterrupted one; a finished one is evaluated and its artefacts written again).
  "The same" is every field but `RUN_LOCATION_FIELDS` (where the folder and the
  extraction batches are, which change no result). `train.epochs` is no exception: a
  finished 2-epoch run asked for 4 is refused, not continued, because its config.json,
  metrics and codes record a 2-epoch run and a continuation killed half-way would leave
  a folder describing neither run; train the longer run into another folder.
- `overwrite=True` starts a fresh run: the files a run writes (`RUN_FILES`, checkpoint and
  TensorBoard files, temporary files of interrupted writes) are removed first, config.json
  last; anything else in the folder is left alone.
- Every artefact is written atomically (`rs_hashing.atomic_files`; weights are made in
  memory first, because HDF5 crashes the process on a full disk), and `finish_run`
  writes its artefacts to temporary files first and moves them all into place only when
  every one was written, metrics.json last: a full disk or an error while finishing
  leaves the previous artefacts whole and from one run. TensorBoard event files are
  appended, as TensorBoard expects; they are logs, not artefacts.
- `restore_checkpoint` reads every tensor of the latest checkpoint before restoring it;
  an unreadable one (truncated, missing) is moved aside with a warning and the previous
  one is used (the run resumes from that earlier epoch and still ends as an
  uninterrupted one); with none usable it stops with a `TrainingError` naming the files.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing import plots
from rs_hashing.data.loaders import load_dataset
from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.errors import FeatureStoreError, RunConflictError, TrainingError
from rs_hashing.atomic_files import atomic_open, atomic_path, savez_atomic, write_bytes_atomic, write_json_atomic
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.encoders.encoder_identity import encoder_identity
from rs_hashing.features.feature_store import MANIFEST, FeatureStore
from rs_hashing.features.image_pipeline import radiometry_of
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from rs_hashing.training import evaluation
from rs_hashing.training.binary_target_updater import BinaryTargetUpdater
from rs_hashing.training.training_pairs import TrainingPairs

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
# What the unreadable files of a checkpoint become (not matched by `ckpt-*`).
CORRUPT_PREFIX = "corrupt-"


def learning_rate_at(config: config_lib.TrainConfig, epoch: int) -> float:
    """Step decay: x`lr_decay` after each epoch listed (1-based "after epoch e" is the
    0-based epoch index e), as the papers' schedule (x0.8 after epochs 1 and 51)."""
    return config.learning_rate * config.lr_decay ** sum(1 for e in config.lr_decay_epochs if epoch >= e)


class StepDecay(keras.callbacks.Callback):
    """Sets the hashing optimizer's learning rate at the start of every epoch."""

    def __init__(self, optimizer, schedule: Callable[[int], float]):
        super().__init__()
        self.optimizer, self.schedule = optimizer, schedule

    def on_epoch_begin(self, epoch, logs=None):
        self.optimizer.learning_rate.assign(self.schedule(epoch))


class NanGuard(keras.callbacks.Callback):
    """Stops with a clear error at the first non-finite loss; the checkpoint on disk is
    then still the last good epoch, because checkpoints are written only at epoch end."""

    def __init__(self, checkpoint_dir: str):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = {k: v for k, v in (logs or {}).items() if not math.isfinite(float(v))}
        if bad:
            raise TrainingError(
                f"non-finite loss at epoch {self.epoch + 1}, step {batch + 1}: {bad}; the last good "
                f"checkpoint is kept in {self.checkpoint_dir} (lower the learning rate or check the features)")


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model, optimizers and the next epoch index at the end of every n-th epoch.

    `number_offset` is added to the checkpoint's file number, so that runs made of
    several stages sharing one manager (CHNR: detector, then hashing) number their
    checkpoints in the order they were written.
    """

    def __init__(self, manager: tf.train.CheckpointManager, epoch_var: tf.Variable, every: int, epochs: int,
                 number_offset: int = 0):
        super().__init__()
        self.manager, self.epoch_var, self.every, self.epochs = manager, epoch_var, every, epochs
        self.number_offset = number_offset

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            self.epoch_var.assign(epoch + 1)
            self.manager.save(checkpoint_number=self.number_offset + epoch + 1)


class HistoryLog(keras.callbacks.Callback):
    """A CSV of the logged values, one row per epoch (Keras CSVLogger's layout: `epoch`
    0-based, then the values by name, NA where absent).

    The whole file is written again, atomically, at every epoch end: Keras' CSVLogger
    appends in place, so a full disk left half a row. Rows of epochs from `first_epoch`
    on are dropped when the log starts: a run killed after its last checkpoint, or one
    resumed from an earlier checkpoint than its latest, trains those epochs again and
    must log each epoch once.
    """

    def __init__(self, path: str, first_epoch: int):
        super().__init__()
        self.path = path
        self.rows = [row for row in _read_rows(path) if _row_epoch(row) < first_epoch]

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{key: _log_value(value) for key, value in (logs or {}).items()}})
        names = sorted({key for row in self.rows for key in row} - {"epoch"})
        with atomic_open(self.path, "w", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["epoch", *names], restval="NA", lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)


def _log_value(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _row_epoch(row: dict) -> float:
    """A history row's epoch; a row that cannot say (a torn line) counts as after all."""
    try:
        return int(row["epoch"])
    except (KeyError, TypeError, ValueError):
        return math.inf


def _read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def build_model(config: config_lib.Config, image_dim: int, text_dim: int, num_train: int,
                **overrides) -> CrossModalHashingModel:
    """The hashing model of a config; `overrides` replace constructor arguments (CHNR's
    loss set turns terms off this way)."""
    m = config.model
    arguments = dict(
        image_dim=image_dim, text_dim=text_dim, bits=m.bits, hidden_dim=m.hidden_dim, num_train=num_train,
        contrastive_inter_weight=m.contrastive_inter_weight,
        contrastive_intra_image_weight=m.contrastive_intra_image_weight,
        contrastive_intra_text_weight=m.contrastive_intra_text_weight,
        adversarial_weight=m.adversarial_weight, quantization_weight=m.quantization_weight,
        bit_balance_weight=m.bit_balance_weight, temperature=m.temperature, gp_weight=m.gp_weight,
        # Coupled L2 of the authors' batch-sum loss at batch 256, on our mean loss (1/512).
        hash_l2=config.train.weight_decay / 512, variant=m.variant, seed=config.train.seed)
    unknown = set(overrides) - set(arguments) - {"use_adversarial", "discriminator_l2"}
    if unknown:
        raise ValueError(f"build_model: unknown model argument(s) {sorted(unknown)}")
    arguments.update(overrides)
    return CrossModalHashingModel(**arguments)


def compile_model(model: CrossModalHashingModel, config: config_lib.Config) -> None:
    t = config.train
    model.compile(
        # epsilon 1e-8 as torch's Adam, which the papers used.
        hash_optimizer=keras.optimizers.Adam(learning_rate=t.learning_rate, epsilon=1e-8),
        discriminator_optimizer=keras.optimizers.Adam(learning_rate=1e-4, beta_1=0.5, beta_2=0.9, epsilon=1e-8))


def _read_history(path: str) -> dict[str, list[float]]:
    rows = _read_rows(path)
    history = {}
    for key in (rows[0] if rows else {}):
        values = [r[key] for r in rows if r.get(key) not in (None, "", "NA")]  # Keras writes NA for absent columns.
        if values and key != "epoch":
            history[key] = [float(v) for v in values]
    return history


def prepare(config: config_lib.Config, dataset: CaptionDataset | None = None):
    """Dataset (loaded unless given), validated feature store, protocol split and noise
    of a config. A store made with other encoder settings than the config's is refused
    (`check_feature_settings`)."""
    dataset = dataset if dataset is not None else load_dataset(config.data, check_images=False)
    if not config.features.features:
        raise ValueError("features is empty: give the feature store folder (--features, as written by "
                         "`rs-hashing extract-features`)")
    store = FeatureStore.open(config.features.features, dataset)
    check_feature_settings(store, config.features)
    split = ProtocolSplit.for_dataset(dataset, config.data)
    noise = None
    if config.data.noise_rate > 0 or config.data.clean_fraction > 0:
        noise = NoisyPairs.inject(np.asarray(store.labels)[split.train], config.data.noise_rate,
                                  config.data.noise_seed, config.data.clean_fraction)
    return dataset, store, split, noise


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
    same config resumes. `overwrite` starts a fresh run instead: the previous run's files
    are removed first (`clear_run`).
    """
    workdir = workdir or config.train.run_dir
    if not workdir:
        raise ValueError("run_dir is empty: give the run folder (--run_dir)")
    config_path = os.path.join(workdir, "config.json")
    if overwrite:
        clear_run(workdir)
    elif os.path.exists(config_path):
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
    os.makedirs(workdir, exist_ok=True)
    if not os.path.exists(config_path):  # A resumed run keeps its config.json as it is.
        config_lib.save_config(config, workdir)
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


# What a run leaves in checkpoints/: the manager's state file (and temporary files of its
# writes, TensorFlow's and ours), checkpoint files and saves interrupted mid-way, and the
# files of unreadable checkpoints moved aside.
_CHECKPOINT_ENTRY = re.compile(
    rf"\.?checkpoint(\.tmp.*|\..+\.tmp)?|({re.escape(CORRUPT_PREFIX)})?ckpt-\d+(\.index|\.data-\d+-of-\d+|_temp.*)")


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:  # Not empty: it holds files that are not the run's.
        pass


def _checkpoint_files(prefix: str) -> list[str]:
    """The files of the checkpoint `prefix` (its .index and .data-* shards) present."""
    escaped = glob.escape(prefix)
    return sorted(glob.glob(escaped + ".index") + glob.glob(escaped + ".data-*"))


def _checkpoint_problem(prefix: str) -> str | None:
    """Why the checkpoint `prefix` cannot be restored (None if it can): every tensor is
    read, without touching the objects a restore would fill, so that a truncated file
    is found before half of its values were assigned."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # pylint: disable=broad-except  # Any failure to read makes it unusable.
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0] if lines else 'unreadable'}"
    return None


def _saved_checkpoints(checkpoint_dir: str) -> list[str]:
    """Names (`ckpt-N`) of the checkpoints of `checkpoint_dir`, oldest first: those the
    manager's `checkpoint` file lists, or, when that file is missing or unreadable, every
    `ckpt-N.index` present."""
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)  # None when missing or unparsable.
    except ValueError:  # Parsed, but names no checkpoint.
        state = None
    if state is not None and state.all_model_checkpoint_paths:
        return [os.path.basename(path) for path in state.all_model_checkpoint_paths]
    indexes = glob.glob(os.path.join(glob.escape(checkpoint_dir), "ckpt-*.index"))
    found = [os.path.basename(path)[:-len(".index")] for path in indexes]
    return sorted((name for name in found if re.fullmatch(r"ckpt-\d+", name)), key=lambda name: int(name[5:]))


def _record_checkpoints(checkpoint_dir: str, names: list[str]) -> None:
    """Rewrites the manager's `checkpoint` file (atomically) to list `names`, oldest
    first, each with its file time, so that the manager keeps counting and deleting them
    as its own saves. The text format of `tf.train.CheckpointManager`'s CheckpointState."""
    present = {name: _checkpoint_files(os.path.join(checkpoint_dir, name)) for name in names}
    names = [name for name in names if present[name]]
    times = [max(os.path.getmtime(path) for path in present[name]) for name in names]
    lines = [f"model_checkpoint_path: {json.dumps(names[-1])}"]
    lines += [f"all_model_checkpoint_paths: {json.dumps(name)}" for name in names]
    lines += [f"all_model_checkpoint_timestamps: {stamp!r}" for stamp in times]
    lines.append(f"last_preserved_timestamp: {min(times) - 1.0!r}")
    write_bytes_atomic(os.path.join(checkpoint_dir, "checkpoint"), ("\n".join(lines) + "\n").encode("utf-8"))


def restore_checkpoint(checkpoint_dir: str, **objects) -> tf.train.CheckpointManager:
    """A manager (last 2 kept) for a checkpoint of `objects`, restored from its latest
    readable save if there is one; a checkpoint that does not fit the objects is an error.

    An unreadable checkpoint (truncated or missing files) is moved aside (its files
    renamed `corrupt-ckpt-N.*`) with a warning, and the one before it is restored: the
    epoch counters come from it, so the run resumes from that earlier epoch. When no
    saved checkpoint is readable, a `TrainingError` names them and nothing is changed.
    """
    checkpoint = tf.train.Checkpoint(**objects)
    saved = _saved_checkpoints(checkpoint_dir)
    usable, unreadable = None, []
    for name in reversed(saved):
        problem = _checkpoint_problem(os.path.join(checkpoint_dir, name))
        if problem is None:
            usable = name
            break
        unreadable.append((name, problem))
    if saved and usable is None:
        raise TrainingError(
            f"no usable checkpoint in {checkpoint_dir}: "
            + "; ".join(f"{_describe_files(checkpoint_dir, name)}: {problem}" for name, problem in unreadable)
            + " (start the run again with --overwrite)")
    for name, problem in unreadable:
        described = _describe_files(checkpoint_dir, name)
        for path in _checkpoint_files(os.path.join(checkpoint_dir, name)):
            os.replace(path, os.path.join(checkpoint_dir, CORRUPT_PREFIX + os.path.basename(path)))
        warnings.warn(f"checkpoint {described} in {checkpoint_dir} is unreadable ({problem}); moved aside as "
                      f"{CORRUPT_PREFIX}{name}.*, resuming from the earlier checkpoint {usable}", stacklevel=2)
    if unreadable or (usable and tf.train.latest_checkpoint(checkpoint_dir) != os.path.join(checkpoint_dir, usable)):
        _record_checkpoints(checkpoint_dir, saved[:saved.index(usable) + 1])
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
    if usable:
        checkpoint.restore(os.path.join(checkpoint_dir, usable)).assert_existing_objects_matched()
    return manager


def _describe_files(checkpoint_dir: str, name: str) -> str:
    files = [os.path.basename(path) for path in _checkpoint_files(os.path.join(checkpoint_dir, name))]
    return f"{name} ({', '.join(files) if files else 'no files'})"


def hashing_checkpoint_objects(model: CrossModalHashingModel, epoch_var: tf.Variable) -> dict:
    """What a hashing run's checkpoint holds: model, both optimizers, next epoch.

    `all_model_variables` lists every model variable as well: tf.train.Checkpoint does
    not track Keras 3 SeedGenerator states through the model, and without them a resumed
    run would redraw its gradient-penalty interpolations from the start seed.
    """
    return dict(model=model, hash_optimizer=model.hash_optimizer,
                discriminator_optimizer=model.discriminator_optimizer, epoch=epoch_var,
                all_model_variables=list(model.variables))


def hashing_callbacks(model: CrossModalHashingModel, config: config_lib.Config, target_views: dict,
                      workdir: str, manager: tf.train.CheckpointManager, epoch_var: tf.Variable, epochs: int,
                      first_epoch: int, number_offset: int = 0) -> list[keras.callbacks.Callback]:
    """Learning-rate steps, binary-target refresh (from `target_views`), NaN guard,
    checkpoints at epoch ends, history.csv (rows before `first_epoch` kept) and
    TensorBoard logs of a hashing `fit`."""
    t = config.train
    return [
        StepDecay(model.hash_optimizer, lambda e: learning_rate_at(t, e)),
        BinaryTargetUpdater(target_views),
        NanGuard(manager.directory),
        # The epoch's history row before its checkpoint: a run killed in between resumes
        # before that epoch, whose row is then dropped and written again.
        HistoryLog(os.path.join(workdir, "history.csv"), first_epoch),
        EpochCheckpoint(manager, epoch_var, t.checkpoint_every, epochs, number_offset=number_offset),
        keras.callbacks.TensorBoard(os.path.join(workdir, TENSORBOARD), write_graph=False),
    ]


def fit_hashing(model: CrossModalHashingModel, pairs: TrainingPairs, config: config_lib.Config, first_epoch: int,
                epochs: int, callbacks: list, verbose: int, item_index: np.ndarray | None = None) -> None:
    """`model.fit` on the pairs' batches for epochs [first_epoch, epochs).

    `item_index` maps the pairs' item positions to rows of the model's binary-target
    table, for pairs that are a subset of the training set (CHNR's phase 1).
    """
    t = config.train
    data = pairs.dataset(t.caption_mode, t.batch_size, t.seed, first_epoch, epochs)
    if item_index is not None:
        table = tf.constant(np.asarray(item_index, np.int32))
        data = data.map(lambda batch: dict(batch, index=tf.gather(table, batch["index"])))
    model.fit(data, epochs=epochs, initial_epoch=first_epoch,
              steps_per_epoch=pairs.steps_per_epoch(t.caption_mode, t.batch_size),
              callbacks=callbacks, verbose=verbose, shuffle=False)  # Order comes from TrainingPairs.


def weights_file_bytes(model: keras.Model) -> bytes:
    """The bytes of `model.save_weights`' .weights.h5 file, made in memory.

    HDF5 does not survive a failed write: on a full disk `save_weights` ends the process
    with a segmentation fault, leaving a half-written file. Made in memory and written by
    Python, a full disk is an OSError and the atomic write cleans up after itself.
    """
    # pylint: disable=import-outside-toplevel,protected-access
    try:  # What Model.save_weights calls, given a file object instead of a path.
        from keras.src.saving import saving_lib
        store_class, save_state = saving_lib.H5IOStore, saving_lib._save_state
    except (ImportError, AttributeError):  # Another Keras: through a file, as save_weights does.
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.weights.h5")
            model.save_weights(path)
            with open(path, "rb") as f:
                return f.read()
    buffer = io.BytesIO()
    store = store_class(buffer, mode="w")
    try:
        save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    finally:
        store.close()
    return buffer.getvalue()


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """`model.save_weights(path)`, atomically and safe on a full disk (see `weights_file_bytes`)."""
    write_bytes_atomic(path, weights_file_bytes(model))


def finish_run(model: CrossModalHashingModel, config: config_lib.Config, store: FeatureStore, split: ProtocolSplit,
               workdir: str, extra: dict, extra_files: Callable[[Callable[[str], str]], None] | None = None) -> dict:
    """Writes final weights, the encoders' identity, evaluation (metrics.json with `extra`
    added, codes, PR curves) and plots of a trained hashing model; returns the metrics.

    Everything is evaluated first and written to temporary files beside the artefacts,
    which replace them together only once all were written (metrics.json, which marks a
    finished run, last): a failure while finishing leaves the folder as it was.
    `extra_files(staged)` writes further artefacts, each to `staged(name)`.
    """
    results, curves, codes = evaluation.evaluate_model(model, store, split)
    results.update(extra)
    history = _read_history(os.path.join(workdir, "history.csv"))
    weights = weights_file_bytes(model)
    with contextlib.ExitStack() as stack:
        def staged(name: str) -> str:
            return stack.enter_context(atomic_path(os.path.join(workdir, name)))

        # Moved into place in reverse order of staging: metrics.json last.
        write_json_atomic(staged("metrics.json"), results)
        write_bytes_atomic(staged("model.weights.h5"), weights)
        write_json_atomic(staged("model_config.json"), model.get_config())
        # The identity of the encoders that made the features: a HashingModel refuses to
        # load the run against other installed weights. Stores made before it was recorded
        # give the identity of the encoders installed now.
        write_json_atomic(staged("encoders.json"), store.manifest.get("encoders") or encoder_identity(config.features))
        write_json_atomic(staged("pr_curves.json"), curves)
        savez_atomic(staged("codes.npz"), **codes)
        plots.plot_pr_curves(curves, staged("pr_curve.png"),
                             title=f"{config.model.method.upper()} {config.model.bits} bits")
        if history:
            plots.plot_training_curves(history, staged("training_curves.png"))
        if extra_files is not None:
            extra_files(staged)
    return results


def train(config: config_lib.Config, workdir: str | None = None, verbose: int = 2,
          pairs_hook: Callable[[TrainingPairs], None] | None = None,
          dataset: CaptionDataset | None = None, overwrite: bool = False) -> dict:
    """Trains DUCH on the configured features, evaluates, and writes the run folder.

    Args:
      config: the resolved configuration.
      workdir: run folder (defaults to `config.train.run_dir`).
      verbose: Keras fit verbosity (1 = progress bar, 2 = a line per epoch).
      pairs_hook: called with the training pairs before training (e.g. to set weights).
      dataset: the config's dataset when the caller has already loaded it.
      overwrite: start a fresh run in a folder that holds one (see `start_run`).
    Returns: the content of metrics.json.
    """
    started = time.perf_counter()
    # Both refusals (features made otherwise, a folder of another run) come before the
    # first write.
    _, store, split, noise = prepare(config, dataset)
    workdir = start_run(config, workdir, overwrite=overwrite)
    if noise is not None:
        write_json_atomic(os.path.join(workdir, "noise.json"), noise.summary())
    pairs = TrainingPairs.from_store(store, split, noise)
    if pairs_hook is not None:
        pairs_hook(pairs)

    t = config.train
    model = build_model(config, store.image_dim, store.text_dim, len(pairs))
    compile_model(model, config)
    model.build_for_features(t.batch_size)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    manager = restore_checkpoint(os.path.join(workdir, CHECKPOINTS), **hashing_checkpoint_objects(model, epoch_var))
    first_epoch = int(epoch_var.numpy())

    if first_epoch < t.epochs:
        callbacks = hashing_callbacks(model, config, pairs.all_views(), workdir, manager, epoch_var, t.epochs,
                                      first_epoch=first_epoch)
        fit_hashing(model, pairs, config, first_epoch, t.epochs, callbacks, verbose)
    extra = {"train_seconds": round(time.perf_counter() - started, 1), "epochs": t.epochs,
             "resumed_from_epoch": first_epoch}
    if noise is not None:
        extra["realised_noise_rate"] = noise.realised_rate
    return finish_run(model, config, store, split, workdir, extra)

