"""The Keras callbacks of a training `fit`: learning-rate steps, a stop at the first
non-finite loss, checkpoints at epoch ends and history.csv, each written so that a
killed and resumed run ends as an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Callable

import keras
import tensorflow as tf

from rs_hashing.atomic_files import atomic_open
from rs_hashing.errors import TrainingError


class StepDecay(keras.callbacks.Callback):
    """Sets the hashing optimizer's learning rate at the start of every epoch."""

    def __init__(self, optimizer, schedule: Callable[[int], float]):
        super().__init__()
        self.optimizer, self.schedule = optimizer, schedule

    def on_epoch_begin(self, epoch, logs=None):
        self.optimizer.learning_rate.assign(self.schedule(epoch))


class StraightThrough(keras.callbacks.Callback):
    """Turns the model's straight-through contrastive codes on from epoch `start` (0-based)
    on, and off before it; set at every epoch's start, so a resumed run agrees."""

    def __init__(self, model, start: int):
        super().__init__()
        self.hashing_model, self.start = model, start

    def on_epoch_begin(self, epoch, logs=None):
        self.hashing_model.set_straight_through(epoch >= self.start)


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
