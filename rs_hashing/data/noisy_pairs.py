"""Wrongly paired captions for the CHNR experiments.

Each training pair outside the protected clean subset keeps its caption with
probability 1 - p; otherwise its caption is replaced by the (chosen) caption of a random
training image of another class, as in the CHNR experiments. The injector is seeded and
records which pairs it corrupted and the rate it realised.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class NoisyPairs:
    """Caption sources of the training pairs after noise injection.

    Attributes:
      caption_source: [T] position (within the training set) of the image whose caption
        each training pair now carries; equals its own position for clean pairs.
      noisy: [T] bool, True where the caption was replaced.
      protected: [T] bool, the clean subset that is never corrupted.
      noise_rate: the rate asked for.
    """

    caption_source: np.ndarray
    noisy: np.ndarray
    protected: np.ndarray
    noise_rate: float

    @property
    def realised_rate(self) -> float:
        return float(self.noisy.mean()) if len(self.noisy) else 0.0

    @classmethod
    def inject(cls, labels: np.ndarray, noise_rate: float, seed: int = 0,
               clean_fraction: float = 0.0) -> "NoisyPairs":
        """Corrupts pairs of a training set whose images have `labels` ([T] ints)."""
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        if not 0.0 <= noise_rate <= 1.0:
            raise ValueError(f"noise_rate={noise_rate!r} must lie in [0, 1]")
        if not 0.0 <= clean_fraction < 1.0:
            raise ValueError(f"clean_fraction={clean_fraction!r} must lie in [0, 1)")
        count = len(labels)
        rng = np.random.default_rng(seed)
        protected = np.zeros(count, dtype=bool)
        protected[rng.choice(count, size=int(round(clean_fraction * count)), replace=False)] = True
        noisy = (rng.random(count) < noise_rate) & ~protected
        if noisy.any() and len(np.unique(labels)) < 2:
            raise ValueError("noise needs at least two classes: a wrong caption comes from another class")
        source = np.arange(count)
        for i in np.flatnonzero(noisy):
            candidates = np.flatnonzero(labels != labels[i])
            source[i] = candidates[rng.integers(len(candidates))]
        return cls(source, noisy, protected, float(noise_rate))

    def summary(self) -> dict:
        return {"noise_rate": self.noise_rate, "realised_noise_rate": self.realised_rate,
                "num_noisy": int(self.noisy.sum()), "num_protected": int(self.protected.sum()),
                "noisy_indices": np.flatnonzero(self.noisy).tolist()}
