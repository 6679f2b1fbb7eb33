"""From noise-detector scores to CHNR's pair weights, and how well the scores separate.

The detector gives each (image, caption) pair a probability w of being correctly
matched. CHNR weights the pair's inter-modal contrastive term by one of

* `probability`: w;
* `cubed`: w^3 (pushes doubtful pairs further down);
* `threshold`: 1 if w > t else 0, with t halfway between the mean score of real and of
  fake pairs at the end of phase 1 (`midpoint_threshold`), strictly greater as in the
  authors' code.
"""

from __future__ import annotations

import numpy as np

WEIGHTINGS = ("probability", "cubed", "threshold")


def _as_scores(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contain {int(np.sum(~np.isfinite(values)))} non-finite value(s)")
    if values.size and (values.min() < 0 or values.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1], got min {values.min():.6g} and max {values.max():.6g}")
    return values


def check_pair_weights(weights, name: str = "pair weights") -> np.ndarray:
    """Returns `weights` as float32 after checking they are 1-D, finite and in [0, 1]."""
    return _as_scores(weights, name).astype(np.float32)


def midpoint_threshold(real_scores, fake_scores) -> float:
    """Halfway between the mean score of real (matched) and of fake pairs."""
    real, fake = _as_scores(real_scores, "real scores"), _as_scores(fake_scores, "fake scores")
    if not real.size or not fake.size:
        raise ValueError(f"midpoint_threshold needs real and fake scores, got {real.size} and {fake.size}")
    return float((real.mean() + fake.mean()) / 2.0)


def pair_weights(scores, weighting: str, threshold: float | None = None) -> np.ndarray:
    """CHNR's weights [P] (float32, in [0, 1]) from detector scores [P] in [0, 1].

    Args:
        scores: detector probabilities, one per pair.
        weighting: one of `WEIGHTINGS`.
        threshold: needed (and only used) for `threshold`: weights are 1 where the score
            is strictly above it, else 0.
    Raises:
        ValueError: for an unknown weighting, a missing or non-finite threshold, or
            scores that are not finite probabilities.
    """
    scores = _as_scores(scores, "detector scores")
    if weighting == "probability":
        weights = scores
    elif weighting == "cubed":
        weights = scores ** 3
    elif weighting == "threshold":
        if threshold is None or not np.isfinite(threshold):
            raise ValueError(f"weighting 'threshold' needs a finite threshold, got {threshold!r}")
        weights = (scores > threshold).astype(np.float64)
    else:
        raise ValueError(f"noise_weighting={weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    return check_pair_weights(weights)


def roc_auc(scores, positive) -> float | None:
    """Area under the ROC curve of `scores` for telling `positive` ([N] bool) items apart.

    The Mann-Whitney form: the probability that a random positive scores above a random
    negative, ties counting one half. None when either class is absent (no noise).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(f"roc_auc: scores {scores.shape} and labels {positive.shape} must be equal 1-D shapes")
    num_positive = int(positive.sum())
    num_negative = positive.size - num_positive
    if num_positive == 0 or num_negative == 0:
        return None
    # Average ranks (1-based) with ties sharing the mean of their positions.
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    stops = np.r_[starts[1:], scores.size]
    for start, stop in zip(starts, stops):
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0
    rank_sum = ranks[positive].sum()
    return float((rank_sum - num_positive * (num_positive + 1) / 2.0) / (num_positive * num_negative))
