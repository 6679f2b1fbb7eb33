"""The hashing module of one modality: feature vector -> continuous hash code."""

from __future__ import annotations

import math
import numbers
from typing import Any

import keras


def check_positive_int(owner: str, name: str, value: Any) -> None:
    """Raises ValueError naming `owner` and `name` unless `value` is an integer > 0."""
    # bool is an int subclass; True as a dimension is always a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}.")


def torch_default_dense(units: int, fan_in: int, name: str, seed: int | None = None) -> keras.layers.Dense:
    """A Dense layer initialised like torch.nn.Linear, which DUCH was tuned with.

    torch draws kernel and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); keeping that
    starting scale keeps the tanh outputs away from saturation as in the authors' runs.
    """
    bound = 1.0 / math.sqrt(fan_in)
    return keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.VarianceScaling(
            scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=seed
        ),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound, seed=None if seed is None else seed + 1),
        name=name,
    )


def torch_default_batch_norm(name: str) -> keras.layers.BatchNormalization:
    """BatchNormalization with torch.nn.BatchNorm1d's defaults (eps 1e-5, momentum 0.1)."""
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


@keras.saving.register_keras_serializable(package="rs_hashing")
class HashHead(keras.Model):
    """Dense(hidden) -> BatchNorm -> ReLU -> Dense(bits) -> tanh.

    One per modality, no weight sharing (DUCH). Outputs continuous codes in (-1, 1);
    `sign()` of them is the binary hash code.

    Args:
        input_dim: length of the input feature vector (512 for ResNet-18, 768 for BERT).
        bits: code length K.
        hidden_dim: width of the hidden layer (4096 in DUCH).
        **kwargs: passed to `keras.Model` (`name`, `trainable`, `dtype`).

    Raises:
        ValueError: if a dimension is not a positive integer; the message names it.
    """

    def __init__(self, input_dim: int, bits: int, hidden_dim: int = 4096, seed: int | None = None,
                 **kwargs: Any):
        check_positive_int("HashHead", "input_dim", input_dim)
        check_positive_int("HashHead", "bits", bits)
        check_positive_int("HashHead", "hidden_dim", hidden_dim)

        features = keras.Input(shape=(input_dim,), name="features")
        hidden = torch_default_dense(hidden_dim, input_dim, name="hidden_dense", seed=seed)(features)
        hidden = torch_default_batch_norm(name="hidden_batch_norm")(hidden)
        hidden = keras.layers.ReLU(name="hidden_relu")(hidden)
        logits = torch_default_dense(bits, hidden_dim, name="code_dense",
                                     seed=None if seed is None else seed + 2)(hidden)
        codes = keras.layers.Activation("tanh", name="codes")(logits)
        super().__init__(inputs=features, outputs=codes, **kwargs)

        self.input_dim = int(input_dim)
        self.bits = int(bits)
        self.hidden_dim = int(hidden_dim)
        self.seed = seed

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument, so `HashHead.from_config` rebuilds it."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_dim": self.input_dim,
            "bits": self.bits,
            "hidden_dim": self.hidden_dim,
            "seed": self.seed,
        }
