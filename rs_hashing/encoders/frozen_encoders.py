"""The frozen image and text encoders a `FeatureConfig` names, built once, on first use.

Feature extraction, a trained run's `HashingModel`, exports and the demo all take their
encoders from one `FrozenEncoders`, so a job builds each encoder at most once, and a
text query never builds the image encoder.

Random encoders (the smoke preset's `tiny_cnn` with image_weights 'none' or 'default'
and `tiny_bert`, or any image encoder with image_weights 'none') are seeded: their seed
is derived from the encoder's name alone, so every process, whatever its global random
state, builds the same weights for the same feature settings. A killed feature
extraction that is resumed in a new process therefore continues with the encoder it
started with, and `computes()` (which compares settings) is true of the weights too.
`tiny_cnn` and `tiny_bert` take the seed through seeded initializers; the other image
encoders are built with Python's `random` (where Keras draws the seeds of unseeded
initializers) seeded for the build and restored afterwards.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from typing import Iterator

import keras

from rs_hashing import config as config_lib
from rs_hashing.encoders.image_encoder import build_image_encoder, image_encoder_feature_dim
from rs_hashing.encoders.text_encoder import TextEncoder
from rs_hashing.encoders.tiny_cnn import TinyCNN

# The feature settings that decide what the encoders compute.
ENCODER_FIELDS = ("image_encoder", "image_weights", "image_size", "text_encoder", "text_pooling",
                  "sequence_length")
DEFAULT_TEXT_ENCODER = "all_minilm_l6_v2"
TINY_TEXT_ENCODER = "tiny_bert"


def random_encoder_seed(tower: str, name: str) -> int:
    """The seed of a randomly initialised encoder: a function of the tower ('image' or
    'text') and the encoder's name only, the same in every process."""
    return zlib.crc32(f"rs_hashing/{tower}/{name}".encode()) & 0x7FFFFFFF


@contextlib.contextmanager
def _python_random_seeded(seed: int) -> Iterator[None]:
    """Seeds Python's `random` for a build and restores its state afterwards, so the
    caller's random stream is left as it was."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


class FrozenEncoders:
    """The image encoder (float pixels [N, S, S, 3] in [0, 255] -> [N, Di]) and the text
    encoder (captions -> [N, Dt]) of one feature configuration.

    Args:
        features: the feature configuration (encoder names, weights, sizes, pooling).
        dtype_policy: Keras dtype policy to build the encoders under (feature
            extraction uses the config's `precision`); None keeps the global policy.
    """

    def __init__(self, features: config_lib.FeatureConfig, dtype_policy: str | None = None):
        self.features = features
        self.dtype_policy = dtype_policy
        self._image = None
        self._text = None

    def _build(self, builder):
        if self.dtype_policy is None:
            return builder()
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.dtype_policy)
        try:
            return builder()
        finally:
            keras.config.set_dtype_policy(previous)

    @property
    def image(self) -> keras.Model:
        """The image encoder (built on first use; random ones seeded, see the module
        docstring)."""
        if self._image is None:
            features = self.features
            weights = None if features.image_weights.lower() == "none" else features.image_weights
            name = features.image_encoder
            seed = random_encoder_seed("image", name)
            if name == "tiny_cnn" and weights in (None, "default"):
                builder = lambda: TinyCNN(  # noqa: E731
                    feature_dim=image_encoder_feature_dim(name), image_size=features.image_size,
                    seed=seed)
            elif weights is None:
                def builder():
                    with _python_random_seeded(seed):
                        return build_image_encoder(name, weights=None,
                                                   image_size=features.image_size)
            else:
                builder = lambda: build_image_encoder(  # noqa: E731
                    name, weights=weights, image_size=features.image_size)
            self._image = self._build(builder)
        return self._image

    @property
    def text(self) -> TextEncoder:
        """The text encoder (built on first use): `all_minilm_l6_v2` (the offline
        default), `tiny_bert` (tests, seeded), or a keras-hub preset name or local
        folder."""
        if self._text is None:
            features = self.features
            if features.text_encoder == TINY_TEXT_ENCODER:
                builder = lambda: TextEncoder.tiny(  # noqa: E731
                    sequence_length=features.sequence_length, pooling=features.text_pooling,
                    seed=random_encoder_seed("text", TINY_TEXT_ENCODER))
            else:
                preset = None if features.text_encoder == DEFAULT_TEXT_ENCODER else features.text_encoder
                builder = lambda: TextEncoder(  # noqa: E731
                    preset=preset, sequence_length=features.sequence_length, pooling=features.text_pooling)
            self._text = self._build(builder)
        return self._text

    def computes(self, features: config_lib.FeatureConfig) -> bool:
        """Whether these encoders compute the features `features` describes (the same
        encoders, weights, sizes and pooling; paths and batch sizes may differ)."""
        return all(getattr(self.features, name) == getattr(features, name) for name in ENCODER_FIELDS)

    def identity(self) -> dict:
        """Package, version and weights fingerprint of both encoders (no model is built)."""
        from rs_hashing.encoders.encoder_identity import encoder_identity  # pylint: disable=import-outside-toplevel

        return encoder_identity(self.features)

    def unsaved_reason(self) -> str | None:
        """Why these encoders cannot be rebuilt elsewhere (random weights that were never
        saved, as the smoke preset's tiny test encoders), or None when they can."""
        features = self.features
        if features.image_weights.lower() == "none" or (
                features.image_encoder == "tiny_cnn" and features.image_weights == "default"):
            return (f"image_encoder='{features.image_encoder}' with image_weights="
                    f"'{features.image_weights}' is randomly initialised and its weights were not "
                    "saved, so an export cannot reproduce the image features. Extract features with "
                    "saved encoder weights (a .weights.h5 file) and train again.")
        if features.text_encoder == TINY_TEXT_ENCODER:
            return (f"text_encoder='{TINY_TEXT_ENCODER}' is a randomly initialised test encoder "
                    "whose weights were not saved; an export cannot reproduce its features. Save it "
                    "as a preset folder and name that folder as text_encoder.")
        return None
