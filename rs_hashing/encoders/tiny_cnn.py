"""A tiny randomly initialised CNN image encoder, for fast unit tests only."""

from typing import Any

import keras

# Its convolutions, the stages a trainable top may take (`first_top_layer`).
_CONVOLUTIONS = ("conv1", "conv2")
NUM_STAGES = len(_CONVOLUTIONS)


@keras.saving.register_keras_serializable(package="rs_hashing")
class TinyCNN(keras.Model):
    """Two small convolutions and global average pooling; never pretrained.

    It follows the encoder convention of this package so that tests can stand
    it in for a real backbone: input float RGB pixels in [0, 255], shape
    `(N, H, W, 3)`, scaled to [0, 1] inside the model; output pooled features
    of shape `(N, feature_dim)`.

    Args:
        feature_dim: width of the second convolution, hence of the output.
        image_size: fixed input height and width, or `None` for any size.
        hidden_dim: width of the first convolution.
        seed: None draws the random weights from Keras' global seeding; an int
            draws them from seeded initializers, so that every process builds the
            same encoder whatever the global random state (a killed and resumed
            feature extraction must not mix two encoders).
        **kwargs: passed to `keras.Model` (e.g. `name`, `trainable`, `dtype`).
    """

    def __init__(
        self,
        feature_dim: int = 16,
        image_size: int | None = None,
        hidden_dim: int = 8,
        seed: int | None = None,
        **kwargs: Any,
    ):
        for arg_name, value in (("feature_dim", feature_dim), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg_name} must be a positive int; got {value!r}.")
        if image_size is not None and (
                not isinstance(image_size, int) or isinstance(image_size, bool)
                or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None; got {image_size!r}.")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None; got {seed!r}.")
        layers = keras.layers
        # An int seed makes an initializer draw the same values on every call (Keras
        # stateless random ops), so each convolution gets its own seed.
        kernels = ["glorot_uniform"] * 2 if seed is None else [
            keras.initializers.GlorotUniform(seed=seed + i) for i in range(2)]
        kwargs.setdefault("name", "tiny_cnn")

        # === Functional model ===
        images = keras.Input(shape=(image_size, image_size, 3), name="images")
        x = layers.Rescaling(1.0 / 255.0, name="normalize")(images)
        x = layers.Conv2D(hidden_dim, 3, strides=2, padding="same", activation="relu",
                          kernel_initializer=kernels[0], name="conv1")(x)
        x = layers.Conv2D(feature_dim, 3, strides=2, padding="same", activation="relu",
                          kernel_initializer=kernels[1], name="conv2")(x)
        features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        super().__init__(inputs=images, outputs=features, **kwargs)

        # === Config ===
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.hidden_dim = hidden_dim
        self.seed = seed

    def first_top_layer(self, stages: int) -> str:
        """The first layer of the top `stages` convolutions (1 or 2), which train with
        the pooling in tower mode (`rs_hashing.encoders.encoder_towers`).

        Raises:
            ValueError: `stages` is not 1 or 2.
        """
        if isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= NUM_STAGES:
            raise ValueError(f"tiny_cnn has {NUM_STAGES} convolutions; trainable stages={stages!r} must be "
                             f"an integer from 1 to {NUM_STAGES}.")
        return _CONVOLUTIONS[NUM_STAGES - stages]

    def get_config(self) -> dict[str, Any]:
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "feature_dim": self.feature_dim,
            "image_size": self.image_size,
            "hidden_dim": self.hidden_dim,
        }
        # Only when set, so that configs saved before the argument existed (and
        # their readers) stay as they were.
        if self.seed is not None:
            config["seed"] = self.seed
        return config
