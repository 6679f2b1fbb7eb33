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
    encoders.json          identity of the encoders that made the features (package,
                           version, weights fingerprint), checked when the run is loaded
    metrics.json           mAP@k (authors' and truncated), precision@k, wall time
    codes.npz              binary codes and labels of the query and database sets
    pr_curves.json, pr_curve.png, training_curves.png
"""

from __future__ import annotations

import csv
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
from rs_hashing.atomic_files import atomic_path, savez_atomic, write_json_atomic
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.encoders.encoder_identity import encoder_identity
from rs_hashing.features.feature_store import FeatureStore
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


def prepare(config: config_lib.Config, dataset: CaptionDataset | None = None):
    """Dataset (loaded unless given), validated feature store, protocol split and noise
    of a config."""
    dataset = dataset if dataset is not None else load_dataset(config.data, check_images=False)
    if not config.features.features:
        raise ValueError("features is empty: give the feature store folder (--features, as written by "
                         "`rs-hashing extract-features`)")
    store = FeatureStore.open(config.features.features, dataset)
    split = ProtocolSplit.for_dataset(dataset, config.data)
    noise = None
    if config.data.noise_rate > 0 or config.data.clean_fraction > 0:
        noise = NoisyPairs.inject(np.asarray(store.labels)[split.train], config.data.noise_rate,
                                  config.data.noise_seed, config.data.clean_fraction)
    return dataset, store, split, noise


def start_run(config: config_lib.Config, workdir: str | None) -> str:
    """The run folder (`workdir` or the config's), created, with config.json written."""
    workdir = workdir or config.train.run_dir
    if not workdir:
        raise ValueError("run_dir is empty: give the run folder (--run_dir)")
    os.makedirs(workdir, exist_ok=True)
    config_lib.save_config(config, workdir)
    return workdir


def restore_checkpoint(checkpoint_dir: str, **objects) -> tf.train.CheckpointManager:
    """A manager (last 2 kept) for a checkpoint of `objects`, restored from its latest
    save if there is one; a checkpoint that does not fit the objects is an error."""
    checkpoint = tf.train.Checkpoint(**objects)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    return manager


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
                      append_history: bool, number_offset: int = 0) -> list[keras.callbacks.Callback]:
    """Learning-rate steps, binary-target refresh (from `target_views`), NaN guard,
    checkpoints at epoch ends, history.csv and TensorBoard logs of a hashing `fit`."""
    t = config.train
    return [
        StepDecay(model.hash_optimizer, lambda e: learning_rate_at(t, e)),
        BinaryTargetUpdater(target_views),
        NanGuard(manager.directory),
        EpochCheckpoint(manager, epoch_var, t.checkpoint_every, epochs, number_offset=number_offset),
        keras.callbacks.CSVLogger(os.path.join(workdir, "history.csv"), append=append_history),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"), write_graph=False),
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


def finish_run(model: CrossModalHashingModel, config: config_lib.Config, store: FeatureStore, split: ProtocolSplit,
               workdir: str, extra: dict) -> dict:
    """Writes final weights, the encoders' identity, evaluation (metrics.json with `extra`
    added, codes, PR curves) and plots of a trained hashing model; returns the metrics."""
    with atomic_path(os.path.join(workdir, "model.weights.h5")) as path:
        model.save_weights(path)
    write_json_atomic(os.path.join(workdir, "model_config.json"), model.get_config())
    # The identity of the encoders that made the features: a HashingModel refuses to
    # load the run against other installed weights. Stores made before it was recorded
    # give the identity of the encoders installed now.
    write_json_atomic(os.path.join(workdir, "encoders.json"),
                      store.manifest.get("encoders") or encoder_identity(config.features))
    results, curves, codes = evaluation.evaluate_model(model, store, split)
    results.update(extra)
    write_json_atomic(os.path.join(workdir, "metrics.json"), results)
    write_json_atomic(os.path.join(workdir, "pr_curves.json"), curves)
    savez_atomic(os.path.join(workdir, "codes.npz"), **codes)
    plots.plot_pr_curves(curves, os.path.join(workdir, "pr_curve.png"),
                         title=f"{config.model.method.upper()} {config.model.bits} bits")
    history = _read_history(os.path.join(workdir, "history.csv"))
    if history:
        plots.plot_training_curves(history, os.path.join(workdir, "training_curves.png"))
    return results


def train(config: config_lib.Config, workdir: str | None = None, verbose: int = 2,
          pairs_hook: Callable[[TrainingPairs], None] | None = None,
          dataset: CaptionDataset | None = None) -> dict:
    """Trains DUCH on the configured features, evaluates, and writes the run folder.

    Args:
      config: the resolved configuration.
      workdir: run folder (defaults to `config.train.run_dir`).
      verbose: Keras fit verbosity (1 = progress bar, 2 = a line per epoch).
      pairs_hook: called with the training pairs before training (e.g. to set weights).
      dataset: the config's dataset when the caller has already loaded it.
    Returns: the content of metrics.json.
    """
    workdir = start_run(config, workdir)
    started = time.perf_counter()
    _, store, split, noise = prepare(config, dataset)
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
    manager = restore_checkpoint(os.path.join(workdir, "checkpoints"), **hashing_checkpoint_objects(model, epoch_var))
    first_epoch = int(epoch_var.numpy())

    if first_epoch < t.epochs:
        callbacks = hashing_callbacks(model, config, pairs.all_views(), workdir, manager, epoch_var, t.epochs,
                                      append_history=first_epoch > 0)
        fit_hashing(model, pairs, config, first_epoch, t.epochs, callbacks, verbose)
    extra = {"train_seconds": round(time.perf_counter() - started, 1), "epochs": t.epochs,
             "resumed_from_epoch": first_epoch}
    if noise is not None:
        extra["realised_noise_rate"] = noise.realised_rate
    return finish_run(model, config, store, split, workdir, extra)

