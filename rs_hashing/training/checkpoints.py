"""Checkpoints of a training run that survive a torn write.

`restore_checkpoint` reads every tensor of the latest save before restoring it; an
unreadable save is moved aside (`CORRUPT_PREFIX`) and the one before it is used.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings

import tensorflow as tf

from rs_hashing.atomic_files import write_bytes_atomic
from rs_hashing.errors import TrainingError

# What the unreadable files of a checkpoint become (not matched by `ckpt-*`).
CORRUPT_PREFIX = "corrupt-"

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
