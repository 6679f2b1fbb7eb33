"""CHNR's noise detector: the probability that an image-caption pair is correctly matched.

The detector sees the concatenated [image feature ; text feature] of a pair. Its first
layer standardises that vector per dimension (statistics of the training pairs, set by
`adapt`): the authors' stored features were standardised, ours are raw encoder outputs
(image and text features differ in scale several-fold), and the gradient penalty of
phase 1 is taken with respect to the standardised input so that "gradient norm 1" means
the same for both modalities. Then three blocks of Dense(hidden) -> ReLU -> Dropout and
Dense(1) give a logit; the model's output is its sigmoid.
"""

from __future__ import annotations

import numbers
from typing import Any

import keras
import numpy as np
from keras import ops

from rs_hashing.models.hash_head import check_positive_int, torch_default_dense

NUM_BLOCKS = 3
# Floor of a standard deviation used for scaling: a constant input dimension stays finite.
_MIN_STD = 1e-6


@keras.saving.register_keras_serializable(package="rs_hashing")
class _Standardize(keras.layers.Layer):
    """(x - mean) / std per dimension, with mean and std as non-trainable weights.

    Unlike keras.layers.Normalization, `call` reads the variables themselves, so values
    restored from a tf.train.Checkpoint take effect without a `finalize_state()`.
    """

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.mean = self.add_weight(name="mean", shape=(dim,), initializer="zeros", trainable=False)
        self.std = self.add_weight(name="std", shape=(dim,), initializer="ones", trainable=False)

    def call(self, inputs):
        return (inputs - ops.cast(self.mean, inputs.dtype)) / ops.cast(self.std, inputs.dtype)


@keras.saving.register_keras_serializable(package="rs_hashing")
class NoiseDetector(keras.Model):
    """[image ; text] -> standardise -> 3 x (Dense/ReLU/Dropout) -> Dense(1) -> sigmoid.

    Calling the model on concatenated pair features [N, image_dim + text_dim] returns
    probabilities [N, 1]. `score(image, text)` does the concatenation; `logits()` and
    `standardize()` expose the two halves that phase-1 training needs (cross-entropy
    from logits, gradient penalty on standardised inputs).

    Args:
        image_dim: image feature length.
        text_dim: text feature length.
        hidden_dim: width of the three hidden blocks (1280 in CHNR).
        dropout: dropout rate of each block, in [0, 1) (0.2 in CHNR).
        seed: seeds the initial weights and the dropout masks (None: Keras' global
            seeding).
        **kwargs: passed to `keras.Model` (`name`, `trainable`, `dtype`).

    Raises:
        ValueError: for a dimension that is not a positive integer, a dropout rate
            outside [0, 1) or a seed that is not an integer; the message names it.
    """

    def __init__(self, image_dim: int, text_dim: int, hidden_dim: int = 1280, dropout: float = 0.2,
                 seed: int | None = None, **kwargs: Any):
        for name, value in (("image_dim", image_dim), ("text_dim", text_dim), ("hidden_dim", hidden_dim)):
            check_positive_int("NoiseDetector", name, value)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"NoiseDetector: dropout must be a number in [0, 1), got {dropout!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"NoiseDetector: seed must be an integer or None, got {seed!r}.")
        offset_seed = (lambda offset: None) if seed is None else (lambda offset: 1000 * int(seed) + offset)

        pair_dim = int(image_dim) + int(text_dim)
        # The classifier maps standardised pairs to logits; it is its own model so that the
        # gradient penalty can differentiate it with respect to its (standardised) input.
        standardized = keras.Input(shape=(pair_dim,), name="standardized_pair")
        hidden, fan_in = standardized, pair_dim
        for block in range(1, NUM_BLOCKS + 1):
            hidden = torch_default_dense(hidden_dim, fan_in, name=f"block{block}_dense",
                                         seed=offset_seed(10 * block))(hidden)
            hidden = keras.layers.ReLU(name=f"block{block}_relu")(hidden)
            hidden = keras.layers.Dropout(dropout, seed=offset_seed(10 * block + 5), name=f"block{block}_dropout")(hidden)
            fan_in = hidden_dim
        logits = torch_default_dense(1, hidden_dim, name="logits", seed=offset_seed(100))(hidden)
        classifier = keras.Model(standardized, logits, name="classifier")

        pair = keras.Input(shape=(pair_dim,), name="pair_features")
        # Identity until `adapt` sets the statistics (mean 0, std 1 at construction).
        standardize = _Standardize(name="standardize")
        probability = keras.layers.Activation("sigmoid", name="probability")(classifier(standardize(pair)))
        super().__init__(inputs=pair, outputs=probability, **kwargs)

        self.image_dim = int(image_dim)
        self.text_dim = int(text_dim)
        self.hidden_dim = int(hidden_dim)
        self.dropout = float(dropout)
        self.seed = None if seed is None else int(seed)
        self.standardize_layer = standardize
        self.classifier = classifier

    @property
    def pair_dim(self) -> int:
        return self.image_dim + self.text_dim

    def pair_features(self, image: Any, text: Any) -> Any:
        """[N, image_dim] and [N, text_dim] -> the concatenated [N, image_dim + text_dim]."""
        image, text = ops.convert_to_tensor(image), ops.convert_to_tensor(text)
        if len(image.shape) != 2 or len(text.shape) != 2 or image.shape[1] != self.image_dim \
                or text.shape[1] != self.text_dim:
            raise ValueError(
                f"NoiseDetector: expected image [N, {self.image_dim}] and text [N, {self.text_dim}] features, "
                f"got {tuple(image.shape)} and {tuple(text.shape)}.")
        return ops.concatenate([image, ops.cast(text, image.dtype)], axis=1)

    def adapt(self, pair_features: np.ndarray) -> None:
        """Sets the standardisation to the per-dimension mean and variance of `pair_features`
        ([N, image_dim + text_dim], typically every training pair)."""
        pair_features = np.asarray(pair_features, np.float32)
        if pair_features.ndim != 2 or pair_features.shape[1] != self.pair_dim or not len(pair_features):
            raise ValueError(f"NoiseDetector.adapt: expected a non-empty [N, {self.pair_dim}] array, "
                             f"got shape {pair_features.shape}.")
        mean = pair_features.mean(axis=0, dtype=np.float64)
        std = np.maximum(pair_features.std(axis=0, dtype=np.float64), _MIN_STD)
        self.standardize_layer.mean.assign(mean.astype(np.float32))
        self.standardize_layer.std.assign(std.astype(np.float32))

    def standardize(self, pair_features: Any) -> Any:
        """The detector's first stage: per-dimension standardised pair features."""
        return self.standardize_layer(pair_features)

    def logits(self, standardized_pairs: Any, training: bool = False) -> Any:
        """Logits [N] of standardised pairs (`standardize` output)."""
        return ops.squeeze(self.classifier(standardized_pairs, training=training), axis=1)

    def score(self, image: Any, text: Any, training: bool = False) -> Any:
        """Probability [N] that each (image, text) pair is correctly matched."""
        return ops.squeeze(self(self.pair_features(image, text), training=training), axis=1)

    def score_arrays(self, image: np.ndarray, text: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """`score` in inference mode over whole arrays, in batches, as float32 numpy."""
        check_positive_int("NoiseDetector.score_arrays", "batch_size", batch_size)
        if len(image) != len(text):
            raise ValueError(f"NoiseDetector.score_arrays: {len(image)} images but {len(text)} captions.")
        parts = [np.asarray(self.score(image[i:i + batch_size], text[i:i + batch_size]))
                 for i in range(0, len(image), batch_size)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument, so `NoiseDetector.from_config` rebuilds it."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
            "seed": self.seed,
        }
