"""Trains a cross-modal hashing model from a feature store and evaluates it.

`train(config)` is the one library call behind `python -m train.train`. It writes into
the work directory:

    config.json            the resolved configuration
    checkpoints/           the last good epoch (model, both optimizers, epoch counter);
                           a killed run resumes here and ends as an uninterrupted one
    history.csv            loss terms per epoch (appended across resumes)
    tensorboard/           TensorBoard logs
    noise.json             realised noise rate and corrupted pair indices (if any)
    model.weights.h5       final weights, with model_config.json to rebuild the model
    metrics.json           mAP@k (authors' and truncated), precision@k, wall time
    codes.npz              binary codes and labels of the query and database sets
    pr_curves.json, pr_curve.png, training_curves.png
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing import plots
from rs_hashing.data.loaders import load_dataset
from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.errors import TrainingError
from rs_hashing.features.feature_store import FeatureStore, write_json_atomic
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from rs_hashing.training import evaluation
from rs_hashing.training.binary_target_updater import BinaryTargetUpdater
from rs_hashing.training.training_pairs import TrainingPairs


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
    """Saves model, optimizers and the next epoch index at the end of every n-th epoch."""

    def __init__(self, manager: tf.train.CheckpointManager, epoch_var: tf.Variable, every: int, epochs: int):
        super().__init__()
        self.manager, self.epoch_var, self.every, self.epochs = manager, epoch_var, every, epochs

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            self.epoch_var.assign(epoch + 1)
            self.manager.save(checkpoint_number=epoch + 1)


def build_model(config: config_lib.Config, image_dim: int, text_dim: int, num_train: int) -> CrossModalHashingModel:
    m = config.model
    model = CrossModalHashingModel(
        image_dim=image_dim, text_dim=text_dim, bits=m.bits, hidden_dim=m.hidden_dim, num_train=num_train,
        contrastive_inter_weight=m.contrastive_inter_weight,
        contrastive_intra_image_weight=m.contrastive_intra_image_weight,
        contrastive_intra_text_weight=m.contrastive_intra_text_weight,
        adversarial_weight=m.adversarial_weight, quantization_weight=m.quantization_weight,
        bit_balance_weight=m.bit_balance_weight, temperature=m.temperature, gp_weight=m.gp_weight,
        # Coupled L2 of the authors' batch-sum loss at batch 256, on our mean loss (1/512).
        hash_l2=config.train.weight_decay / 512, variant=m.variant, seed=config.train.seed)
    return model


def compile_model(model: CrossModalHashingModel, config: config_lib.Config) -> None:
    t = config.train
    model.compile(
        # epsilon 1e-8 as torch's Adam, which the papers used.
        hash_optimizer=keras.optimizers.Adam(learning_rate=t.learning_rate, epsilon=1e-8),
        discriminator_optimizer=keras.optimizers.Adam(learning_rate=1e-4, beta_1=0.5, beta_2=0.9, epsilon=1e-8))


def _read_history(path: str) -> dict[str, list[float]]:
    if not os.path.exists(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    history = {}
    for key in (rows[0] if rows else {}):
        values = [r[key] for r in rows if r.get(key) not in (None, "", "NA")]  # Keras writes NA for absent columns.
        if values and key != "epoch":
            history[key] = [float(v) for v in values]
    return history


def prepare(config: config_lib.Config):
    """Dataset, validated feature store, protocol split and noise of a config."""
    dataset = load_dataset(config.data, check_images=False)
    if not config.features.features:
        raise ValueError("features is empty: give the feature store folder (train.extract_features --out)")
    store = FeatureStore.open(config.features.features, dataset)
    split = ProtocolSplit.for_dataset(dataset, config.data)
    noise = None
    if config.data.noise_rate > 0 or config.data.clean_fraction > 0:
        noise = NoisyPairs.inject(np.asarray(store.labels)[split.train], config.data.noise_rate,
                                  config.data.noise_seed, config.data.clean_fraction)
    return dataset, store, split, noise


def train(config: config_lib.Config, workdir: str | None = None, verbose: int = 2,
          pairs_hook: Callable[[TrainingPairs], None] | None = None) -> dict:
    """Trains DUCH on the configured features, evaluates, and writes the run folder.

    Args:
      config: the resolved configuration.
      workdir: run folder (defaults to `config.train.workdir`).
      verbose: Keras fit verbosity (1 = progress bar, 2 = a line per epoch).
      pairs_hook: called with the training pairs before training (CHNR sets weights).
    Returns: the content of metrics.json.
    """
    workdir = workdir or config.train.workdir
    if not workdir:
        raise ValueError("workdir is empty: give the run folder")
    os.makedirs(workdir, exist_ok=True)
    config_lib.save_config(config, workdir)
    started = time.perf_counter()
    _, store, split, noise = prepare(config)
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
    checkpoint = tf.train.Checkpoint(
        model=model, hash_optimizer=model.hash_optimizer,
        discriminator_optimizer=model.discriminator_optimizer, epoch=epoch_var)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    first_epoch = int(epoch_var.numpy())

    if first_epoch < t.epochs:
        callbacks = [
            StepDecay(model.hash_optimizer, lambda e: learning_rate_at(t, e)),
            BinaryTargetUpdater(pairs.all_views()),
            NanGuard(checkpoint_dir),
            EpochCheckpoint(manager, epoch_var, t.checkpoint_every, t.epochs),
            keras.callbacks.CSVLogger(os.path.join(workdir, "history.csv"), append=first_epoch > 0),
            keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"), write_graph=False),
        ]
        data = pairs.dataset(t.caption_mode, t.batch_size, t.seed, first_epoch, t.epochs)
        model.fit(data, epochs=t.epochs, initial_epoch=first_epoch,
                  steps_per_epoch=pairs.steps_per_epoch(t.caption_mode, t.batch_size),
                  callbacks=callbacks, verbose=verbose, shuffle=False)  # Order comes from TrainingPairs.
    train_seconds = time.perf_counter() - started

    model.save_weights(os.path.join(workdir, "model.weights.h5"))
    write_json_atomic(os.path.join(workdir, "model_config.json"), model.get_config())
    results, curves, codes = evaluation.evaluate_model(model, store, split)
    results["train_seconds"] = round(train_seconds, 1)
    results["epochs"] = t.epochs
    results["resumed_from_epoch"] = first_epoch
    if noise is not None:
        results["realised_noise_rate"] = noise.realised_rate
    write_json_atomic(os.path.join(workdir, "metrics.json"), results)
    write_json_atomic(os.path.join(workdir, "pr_curves.json"), curves)
    np.savez_compressed(os.path.join(workdir, "codes.npz"), **codes)
    plots.plot_pr_curves(curves, os.path.join(workdir, "pr_curve.png"),
                         title=f"{config.model.method.upper()} {config.model.bits} bits")
    history = _read_history(os.path.join(workdir, "history.csv"))
    if history:
        plots.plot_training_curves(history, os.path.join(workdir, "training_curves.png"))
    return results


def load_trained_model(workdir: str) -> CrossModalHashingModel:
    """Rebuilds the model of a finished run from model_config.json and its weights."""
    with open(os.path.join(workdir, "model_config.json"), encoding="utf-8") as f:
        model = CrossModalHashingModel.from_config(json.load(f))
    model.build_for_features(1)
    model.load_weights(os.path.join(workdir, "model.weights.h5"))
    return model
