"""CHNR's noise detector in training: building it, its batches, its scores of the
training pairs, and what the run folder records of it (detector.json, the score
histograms, the saved detector). The driver is `chnr`.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing import plots
from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.models.noise_detector import NoiseDetector
from rs_hashing.models.noise_detector_trainer import NoiseDetectorTrainer
from rs_hashing.training import noise_weights
from rs_hashing.training.training_pairs import TrainingPairs

# Inference batch of the detector when scoring whole arrays.
_SCORE_BATCH_SIZE = 1024


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
    """Batches of trusted pairs with their items' scene labels, for the detector's `fit`:
    the hashing nets' batches (`TrainingPairs.epoch_chunks`, the last of an epoch the
    remainder)."""
    t = config.train

    def batches():
        for items, captions in pairs.epoch_chunks(t.caption_mode, t.batch_size, t.seed, first_epoch, epochs):
            batch = pairs.batch(items, captions)
            yield {key: batch[key] for key in ("image", "image_aug", "text", "text_aug")} | {
                "label": np.asarray(pairs.labels[items], np.int32)}

    image_dim, text_dim = pairs.image.shape[1], pairs.text_pool.shape[1]
    signature = {
        "image": tf.TensorSpec([None, image_dim], tf.float32),
        "image_aug": tf.TensorSpec([None, image_dim], tf.float32),
        "text": tf.TensorSpec([None, text_dim], tf.float32),
        "text_aug": tf.TensorSpec([None, text_dim], tf.float32),
        "label": tf.TensorSpec([None], tf.int32),
    }
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


def pool_items(pairs: TrainingPairs) -> np.ndarray:
    """[P] the item (position in `pairs`) of every caption-pool entry."""
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


def format_optional(value: float | None) -> str:
    return "n/a (no corrupted pairs)" if value is None else f"{value:.3f}"


def detector_summary(config: config_lib.Config, noise: NoisyPairs, pairs: TrainingPairs, scores: np.ndarray,
                     corrupted: np.ndarray, real_scores: np.ndarray, fake_scores: np.ndarray, threshold: float,
                     clean_subset_size: int) -> dict:
    """detector.json: how well the frozen detector tells corrupted pairs from clean ones."""
    items = pool_items(pairs)
    unprotected = ~np.asarray(noise.protected)[pairs.item_ids[items]]
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
