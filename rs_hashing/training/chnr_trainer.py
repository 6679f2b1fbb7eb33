"""Trains CHNR: DUCH-style hashing made robust to wrongly paired captions by a detector.

`train_chnr(config)` is the library call behind `python -m train.train --method=chnr`.
A run has three explicit stages, each its own `fit`:

1. Detector (phase 1): a `NoiseDetector` learns trusted pairs against in-batch fakes on
   the clean subset (`NoisyPairs.protected`, `clean_fraction` of the training pairs,
   never corrupted) for `phase1_epochs`, with its own AdamW.
2. Hashing, phase 1: the hashing nets train on the same clean subset for
   `phase1_epochs`, every pair weighted 1. (The authors interleave 1 and 2 batch by
   batch; the detector never sees codes and the hashing nets never see the detector, so
   running them one after the other trains the same thing.)
3. Hashing, phase 2: the detector is frozen; it scores every (image, caption) pair of
   the whole noisy training set once, the scores become `TrainingPairs.pair_weights`
   (`noise_weighting`: probability, cubed or threshold), and the hashing nets train
   `phase2_epochs` more on all pairs, each pair's inter-modal contrastive term weighted.
   Before phase 2 every item's binary target is recomputed from the phase-1 nets (items
   outside the clean subset still had their random initial targets).

Loss sets (`chnr_loss`): "chnr" is the authors' CHNR objective, weighted inter-modal
NT-Xent plus quantisation only (intra-modal, adversarial and bit-balance terms off; the
quantisation weight is the authors' 0.001 on sums, rescaled for our means exactly as
`CrossModalHashingModel.authors_equivalent_weights`). "duch" keeps the full DUCH loss
set of the config, with the same noise weights on the inter-modal term. Weights are
normalised once, sum(w * l) / sum(w) (`rs_hashing.losses.weighting`); the authors'
summed loss was not normalised by the weights.

One checkpoint (checkpoints/) holds the hashing model and optimizers, the detector with
its trainer's step seed and optimizer, and both stage counters, so a killed run resumes
in whichever stage it was and ends as an uninterrupted one. Besides everything
`trainer.train` writes, the run folder gets:

    detector.weights.h5      the trained detector, with detector_config.json
    detector_history.csv     phase-1 detector loss, real and fake scores per epoch
    detector.json            threshold, mean real/fake scores, ROC-AUC on the training
                             pairs (clean vs corrupted), realised noise rate, weights
    detector_scores.png      score histograms of clean and of corrupted training pairs

The run folder follows the rules of `run_folder` and `checkpoints` (one config per
folder, atomic artefacts, checkpoint fallback); detector.json and detector_scores.png
are written with the final artefacts and moved into place with them.
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing import plots
from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.atomic_files import write_json_atomic
from rs_hashing.models.noise_detector import NoiseDetector
from rs_hashing.models.noise_detector_trainer import NoiseDetectorTrainer
from rs_hashing.training import checkpoints, noise_weights, run_folder, trainer, weights_file
from rs_hashing.training.callbacks import EpochCheckpoint, HistoryLog, NanGuard
from rs_hashing.training.training_pairs import TrainingPairs

# Inference batch of the detector when scoring whole arrays.
_SCORE_BATCH_SIZE = 1024


def chnr_model_overrides(config: config_lib.Config) -> dict:
    """`trainer.build_model` overrides of the configured CHNR loss set."""
    if config.model.chnr_loss == "duch":
        return {}
    # CHNR as coded: inter-modal NT-Xent + quantisation. A None quantisation weight is
    # resolved by the model to the authors' balance (2 * 0.001 * bits on mean terms).
    return dict(contrastive_intra_image_weight=0.0, contrastive_intra_text_weight=0.0,
                adversarial_weight=0.0, bit_balance_weight=0.0, use_adversarial=False)


def build_detector(config: config_lib.Config, image_dim: int, text_dim: int) -> NoiseDetector:
    m = config.model
    return NoiseDetector(image_dim, text_dim, hidden_dim=m.detector_hidden, dropout=m.detector_dropout,
                         seed=config.train.seed, name="noise_detector")


def build_detector_trainer(detector: NoiseDetector, config: config_lib.Config) -> NoiseDetectorTrainer:
    """The phase-1 model with CHNR's AdamW (betas 0.5, 0.9; torch's epsilon)."""
    t = config.train
    detector_trainer = NoiseDetectorTrainer(detector, gp_weight=config.model.gp_weight,
                                            augmented_views=config.model.detector_augmented_views, seed=t.seed)
    detector_trainer.compile(optimizer=keras.optimizers.AdamW(
        learning_rate=t.detector_learning_rate, beta_1=0.5, beta_2=0.9,
        weight_decay=t.detector_weight_decay, epsilon=1e-8))
    return detector_trainer


def detector_dataset(pairs: TrainingPairs, config: config_lib.Config, first_epoch: int,
                     epochs: int) -> tf.data.Dataset:
    """Batches of trusted pairs with their items' scene labels, for the detector's `fit`."""
    t = config.train
    steps = pairs.steps_per_epoch(t.caption_mode, t.batch_size)

    def batches():
        for epoch in range(first_epoch, epochs):
            items, captions = pairs.pairs_for_epoch(t.caption_mode, t.seed, epoch)
            for step in range(steps):
                chunk = slice(step * t.batch_size, (step + 1) * t.batch_size)
                batch = pairs.batch(items[chunk], captions[chunk])
                yield {key: batch[key] for key in ("image", "image_aug", "text", "text_aug")} | {
                    "label": np.asarray(pairs.labels[items[chunk]], np.int32)}

    image_dim, text_dim = pairs.image.shape[1], pairs.text_pool.shape[1]
    signature = {
        "image": tf.TensorSpec([t.batch_size, image_dim], tf.float32),
        "image_aug": tf.TensorSpec([t.batch_size, image_dim], tf.float32),
        "text": tf.TensorSpec([t.batch_size, text_dim], tf.float32),
        "text_aug": tf.TensorSpec([t.batch_size, text_dim], tf.float32),
        "label": tf.TensorSpec([t.batch_size], tf.int32),
    }
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


def pool_items(pairs: TrainingPairs) -> np.ndarray:
    """[P] the item (training position) of every caption-pool entry."""
    return np.repeat(np.arange(len(pairs)), np.diff(pairs.pool_offsets))


def score_pool(detector: NoiseDetector, pairs: TrainingPairs) -> np.ndarray:
    """Detector probability [P] of every (image, caption) pair of the caption pool."""
    return detector.score_arrays(pairs.image[pool_items(pairs)], pairs.text_pool, _SCORE_BATCH_SIZE)


def real_and_fake_scores(detector: NoiseDetector, pairs: TrainingPairs, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the (trusted) pairs' own captions and of the same captions given to a
    random item of another class (any other item where there is no other class)."""
    items = pool_items(pairs)
    labels = np.asarray(pairs.labels)
    rng = np.random.default_rng([seed, 1])
    fake_items = np.empty_like(items)
    for k, item in enumerate(items):
        candidates = np.flatnonzero(labels != labels[item])
        if not len(candidates):
            candidates = np.flatnonzero(np.arange(len(labels)) != item)
        fake_items[k] = candidates[rng.integers(len(candidates))]
    real = detector.score_arrays(pairs.image[items], pairs.text_pool, _SCORE_BATCH_SIZE)
    fake = detector.score_arrays(pairs.image[fake_items], pairs.text_pool, _SCORE_BATCH_SIZE)
    return real, fake


def plot_score_histograms(clean_scores: np.ndarray, corrupted_scores: np.ndarray, threshold: float,
                          path: str, title: str = "") -> str:
    """Histograms of detector scores of clean and of corrupted pairs, threshold marked."""
    plt = plots._pyplot()  # pylint: disable=protected-access
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bins = np.linspace(0.0, 1.0, 41)
    for scores, name in ((clean_scores, "clean pairs"), (corrupted_scores, "corrupted pairs")):
        if len(scores):
            ax.hist(scores, bins=bins, alpha=0.6, label=f"{name} ({len(scores)})", density=True)
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("detector score (probability of a correct match)")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "noise detector scores")
    return plots._save(fig, path)  # pylint: disable=protected-access


def load_detector(workdir: str) -> NoiseDetector:
    """Rebuilds the detector of a finished CHNR run from its config and weights."""
    with open(os.path.join(workdir, "detector_config.json"), encoding="utf-8") as f:
        detector = NoiseDetector.from_config(json.load(f))
    detector.load_weights(os.path.join(workdir, "detector.weights.h5"))
    return detector


def _check_config(config: config_lib.Config, noise: NoisyPairs | None) -> None:
    if config.data.clean_fraction <= 0 or noise is None or not noise.protected.any():
        raise ValueError(
            f"clean_fraction={config.data.clean_fraction!r}: CHNR needs a trusted clean subset to train its "
            "detector; set clean_fraction > 0 (the paper: 0.2 for RSICD, 0.3 for UCM)")
    if config.train.phase1_epochs < 1:
        raise ValueError(f"phase1_epochs={config.train.phase1_epochs!r}: CHNR's detector needs at least one epoch")


def _check_clean_subset(config: config_lib.Config, clean_pairs: TrainingPairs) -> None:
    t = config.train
    count = len(clean_pairs.text_pool) if t.caption_mode == "all_pairs" else len(clean_pairs)
    if count < t.batch_size:
        raise ValueError(f"the trusted clean subset has {count} pairs, fewer than batch_size={t.batch_size}: "
                         "raise clean_fraction or lower batch_size")


def train_chnr(config: config_lib.Config, workdir: str | None = None, verbose: int = 2,
               overwrite: bool = False) -> dict:
    """Trains CHNR (detector, hashing phase 1, hashing phase 2), evaluates, and writes
    the run folder (see the module docstring).

    Args:
      config: the resolved configuration (`clean_fraction` > 0, `phase1_epochs` >= 1).
      workdir: run folder (defaults to `config.train.run_dir`).
      verbose: Keras fit verbosity (1 = progress bar, 2 = a line per epoch).
      overwrite: start a fresh run in a folder that holds one (see `run_folder.start_run`).
    Returns: the content of metrics.json, with the detector's summary under "detector".
    """
    started = time.perf_counter()
    # Every refusal (features, config, run folder) comes before the first write.
    _, store, split, noise = trainer.prepare(config)
    _check_config(config, noise)
    workdir = run_folder.start_run(config, workdir, overwrite=overwrite)
    write_json_atomic(os.path.join(workdir, "noise.json"), noise.summary())
    t = config.train
    phase1, total = t.phase1_epochs, t.phase1_epochs + t.phase2_epochs

    pairs = TrainingPairs.from_store(store, split, noise)
    clean_items = np.flatnonzero(noise.protected)
    clean_pairs = TrainingPairs.from_store(store, split, noise, items=clean_items)
    _check_clean_subset(config, clean_pairs)

    model = trainer.build_model(config, store.image_dim, store.text_dim, len(pairs), **chnr_model_overrides(config))
    trainer.compile_model(model, config)
    model.build_for_features(t.batch_size)
    detector = build_detector(config, store.image_dim, store.text_dim)
    # Standardisation statistics of the training pairs (each item with its chosen
    # caption): a fixed function of the data, so a restored checkpoint holds the same.
    detector.adapt(np.asarray(detector.pair_features(pairs.image, pairs.text_pool[pairs.chosen])))
    detector_trainer = build_detector_trainer(detector, config)

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    detector_epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    manager = checkpoints.restore_checkpoint(
        os.path.join(workdir, run_folder.CHECKPOINTS), **trainer.hashing_checkpoint_objects(model, epoch_var),
        detector_trainer=detector_trainer, detector_optimizer=detector_trainer.optimizer,
        detector_epoch=detector_epoch_var,
        # As for the hashing model (see hashing_checkpoint_objects): list every detector
        # variable so that SeedGenerator states (dropout masks, fake partners) resume too.
        all_detector_variables=list(detector_trainer.variables))
    first_detector_epoch, first_epoch = int(detector_epoch_var.numpy()), int(epoch_var.numpy())

    # Stage 1: the detector on the trusted subset. Checkpoints 1..phase1.
    if first_detector_epoch < phase1:
        callbacks = [
            NanGuard(manager.directory),
            HistoryLog(os.path.join(workdir, "detector_history.csv"), first_detector_epoch),
            EpochCheckpoint(manager, detector_epoch_var, t.checkpoint_every, phase1),
        ]
        detector_trainer.fit(detector_dataset(clean_pairs, config, first_detector_epoch, phase1),
                             epochs=phase1, initial_epoch=first_detector_epoch,
                             steps_per_epoch=clean_pairs.steps_per_epoch(t.caption_mode, t.batch_size),
                             callbacks=callbacks, verbose=verbose, shuffle=False)
    detector.trainable = False  # Frozen from here on: phase 2 only reads its scores.
    weights_file.save_weights_atomic(detector, os.path.join(workdir, "detector.weights.h5"))
    write_json_atomic(os.path.join(workdir, "detector_config.json"), detector.get_config())
    real_scores, fake_scores = real_and_fake_scores(detector, clean_pairs, t.seed)
    threshold = noise_weights.midpoint_threshold(real_scores, fake_scores)

    # Stage 2: hashing phase 1 on the trusted subset, unit weights. Checkpoints after the
    # detector's, numbered phase1 + epoch.
    if first_epoch < phase1:
        views = clean_pairs.all_views()
        views["index"] = clean_items[views["index"]].astype(np.int32)  # Rows of the full target table.
        callbacks = trainer.hashing_callbacks(model, config, views, workdir, manager, epoch_var, phase1,
                                              first_epoch=first_epoch, number_offset=phase1)
        trainer.fit_hashing(model, clean_pairs, config, first_epoch, phase1, callbacks, verbose,
                            item_index=clean_items)

    # Stage 3: hashing phase 2 on every pair, weighted by the frozen detector.
    scores = score_pool(detector, pairs)
    pairs.pair_weights = noise_weights.pair_weights(scores, config.model.noise_weighting, threshold)
    phase2_first = max(int(epoch_var.numpy()), phase1)
    if phase2_first < total:
        full_views = pairs.all_views()
        if phase2_first == phase1:
            model.update_binary_targets(full_views)
        callbacks = trainer.hashing_callbacks(model, config, full_views, workdir, manager, epoch_var, total,
                                              first_epoch=phase2_first, number_offset=phase1)
        trainer.fit_hashing(model, pairs, config, phase2_first, total, callbacks, verbose)
    train_seconds = round(time.perf_counter() - started, 1)

    corrupted = np.asarray(noise.noisy)[pool_items(pairs)]
    summary = _detector_summary(config, noise, pairs, scores, corrupted, real_scores, fake_scores, threshold,
                                len(clean_items))

    def detector_files(staged):
        # Written with the final artefacts, and moved into place with them.
        plot_score_histograms(scores[~corrupted], scores[corrupted], threshold, staged("detector_scores.png"),
                              title=f"CHNR detector, noise rate {config.data.noise_rate:g}, "
                                    f"ROC-AUC {_format_optional(summary['roc_auc'])}")
        write_json_atomic(staged("detector.json"), summary)

    extra = {
        "train_seconds": train_seconds, "epochs": total, "phase1_epochs": phase1, "phase2_epochs": t.phase2_epochs,
        "resumed_from_epoch": first_epoch, "resumed_from_detector_epoch": first_detector_epoch,
        "realised_noise_rate": noise.realised_rate,
        "detector": {key: summary[key] for key in ("roc_auc", "roc_auc_unprotected", "threshold",
                                                   "noise_weighting", "mean_weight_clean",
                                                   "mean_weight_corrupted")},
    }
    return trainer.finish_run(model, config, store, split, workdir, extra, extra_files=detector_files)


def _format_optional(value: float | None) -> str:
    return "n/a (no corrupted pairs)" if value is None else f"{value:.3f}"


def _detector_summary(config: config_lib.Config, noise: NoisyPairs, pairs: TrainingPairs, scores: np.ndarray,
                      corrupted: np.ndarray, real_scores: np.ndarray, fake_scores: np.ndarray, threshold: float,
                      clean_subset_size: int) -> dict:
    """detector.json: how well the frozen detector tells corrupted pairs from clean ones."""
    items = pool_items(pairs)
    unprotected = ~np.asarray(noise.protected)[items]
    weights = pairs.pair_weights

    def mean_or_none(values):
        return float(np.mean(values)) if len(values) else None

    return {
        "noise_weighting": config.model.noise_weighting,
        "chnr_loss": config.model.chnr_loss,
        "threshold": threshold,
        "real_mean_score": float(np.mean(real_scores)),
        "fake_mean_score": float(np.mean(fake_scores)),
        # Clean (positive) vs corrupted pairs over every (image, caption) pair of the
        # training set; "unprotected" leaves out the trusted subset the detector trained on.
        "roc_auc": noise_weights.roc_auc(scores, ~corrupted),
        "roc_auc_unprotected": noise_weights.roc_auc(scores[unprotected], ~corrupted[unprotected]),
        "noise_rate": config.data.noise_rate,
        "realised_noise_rate": noise.realised_rate,
        "num_training_pairs": int(len(scores)),
        "num_corrupted_pairs": int(corrupted.sum()),
        "clean_subset_size": int(clean_subset_size),
        "mean_score_clean": mean_or_none(scores[~corrupted]),
        "mean_score_corrupted": mean_or_none(scores[corrupted]),
        "mean_weight_clean": mean_or_none(weights[~corrupted]),
        "mean_weight_corrupted": mean_or_none(weights[corrupted]),
        "score_histogram": "detector_scores.png",
    }
