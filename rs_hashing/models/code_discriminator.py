"""DUCH's code discriminator: tells text codes (real) from image codes (fake)."""

from __future__ import annotations

from typing import Any

import keras

from rs_hashing.models.hash_head import (
    check_positive_int,
    torch_default_batch_norm,
    torch_default_dense,
)


@keras.saving.register_keras_serializable(package="rs_hashing")
class CodeDiscriminator(keras.Model):
    """Dense(2K) -> BatchNorm -> ReLU -> Dense(1), returning logits of shape [N, 1].

    DUCH always runs it with batch statistics (the authors never switched it to eval
    mode); `CrossModalHashingModel` calls it with `training=True`.

    Args:
        bits: code length K of its input.
        seed: seeds the initial weights (None: Keras' global seeding).
        **kwargs: passed to `keras.Model` (`name`, `trainable`, `dtype`).

    Raises:
        ValueError: if `bits` is not a positive integer.
    """

    def __init__(self, bits: int, seed: int | None = None, **kwargs: Any):
        check_positive_int("CodeDiscriminator", "bits", bits)

        codes = keras.Input(shape=(bits,), name="codes")
        hidden = torch_default_dense(2 * bits, bits, name="hidden_dense", seed=seed)(codes)
        hidden = torch_default_batch_norm(name="hidden_batch_norm")(hidden)
        hidden = keras.layers.ReLU(name="hidden_relu")(hidden)
        logits = torch_default_dense(1, 2 * bits, name="logits", seed=None if seed is None else seed + 2)(hidden)
        super().__init__(inputs=codes, outputs=logits, **kwargs)

        self.bits = int(bits)
        self.seed = seed

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument, so `CodeDiscriminator.from_config` rebuilds it."""
        return {"name": self.name, "trainable": self.trainable, "bits": self.bits, "seed": self.seed}
