"""A trained run's whole encoding path, from raw inputs to hash codes, in Keras.

Training never sees raw images or captions: it reads features that the frozen encoders
computed once (`rs_hashing.features`). Serving and the edge need the whole chain back:
image bytes -> `image_pipeline` -> image encoder -> image head, and caption -> text
encoder -> text head. `HashingEncoders` holds those four pieces for one run folder. Its
methods are the reference ("the Keras model's codes") that every export is checked
against bit for bit, and the exporters build their graphs from the same objects.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.features.extraction import (TINY_TEXT_ENCODER, build_image_encoder_from_config,
                                            build_text_encoder)
from rs_hashing.features.image_pipeline import decode_image, resize_image
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from rs_hashing.models.text_encoder import TextEncoder

RUN_FILES = ("config.json", "model_config.json", "model.weights.h5")


def binary_codes(hash_codes: np.ndarray) -> np.ndarray:
    """sign() with 0 -> +1 as int8 +-1 (the rule of `training.evaluation.binarize`)."""
    return np.where(np.asarray(hash_codes) >= 0, 1, -1).astype(np.int8)


class HashingEncoders:
    """Image encoder + image head and text encoder + text head of one trained run.

    Args:
        features: the run's feature configuration (encoder names, image size, ...).
        model: the trained hashing model (its heads map features to codes).
        image_encoder: float pixels [N, S, S, 3] in [0, 255] -> features [N, image_dim].
        text_encoder: captions -> features [N, text_dim].

    Raises:
        ValueError: an encoder's feature width differs from what the heads were trained
            on (the message names both widths).
    """

    def __init__(self, features: config_lib.FeatureConfig, model: CrossModalHashingModel,
                 image_encoder: keras.Model, text_encoder: TextEncoder):
        image_dim = int(image_encoder.output_shape[-1])
        if image_dim != model.image_dim:
            raise ValueError(
                f"image encoder '{features.image_encoder}' gives {image_dim}-d features but the "
                f"image head was trained on {model.image_dim}-d features")
        if text_encoder.output_dim != model.text_dim:
            raise ValueError(
                f"text encoder '{features.text_encoder}' gives {text_encoder.output_dim}-d "
                f"features but the text head was trained on {model.text_dim}-d features")
        self.features = features
        self.model = model
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        # The feature extractor runs the encoder through a tf.function in inference
        # mode; the reference path does the same so that its numbers are training's.
        self._image_features = tf.function(
            lambda pixels: image_encoder(pixels, training=False), reduce_retracing=True)

    @classmethod
    def from_workdir(cls, workdir: str) -> "HashingEncoders":
        """Rebuilds the encoders a run folder's config.json names and its trained heads.

        Raises:
            FileNotFoundError: the folder lacks config.json, model_config.json or
                model.weights.h5 (all are named).
            ValueError: the run's features came from a randomly initialised encoder
                (`image_weights=none`, `tiny_cnn` with default weights, or
                `text_encoder=tiny_bert`), whose weights were never saved, so no export
                could reproduce them.
        """
        missing = [name for name in RUN_FILES if not os.path.isfile(os.path.join(workdir, name))]
        if missing:
            raise FileNotFoundError(
                f"{workdir}: not a finished run folder, {', '.join(missing)} missing "
                "(train.train writes them when training ends)")
        config = config_lib.load_config(workdir)
        features = config.features
        random_image_encoder = features.image_weights.lower() == "none" or (
            features.image_encoder == "tiny_cnn" and features.image_weights == "default")
        if random_image_encoder:
            raise ValueError(
                f"{workdir}: image_encoder='{features.image_encoder}' with "
                f"image_weights='{features.image_weights}' is randomly initialised and its "
                "weights were not saved, so an export cannot reproduce the image features. "
                "Extract features with saved encoder weights (a .weights.h5 file) and train again.")
        if features.text_encoder == TINY_TEXT_ENCODER:
            raise ValueError(
                f"{workdir}: text_encoder='{TINY_TEXT_ENCODER}' is a randomly initialised test "
                "encoder whose weights were not saved; an export cannot reproduce its features. "
                "Save it as a preset folder and name that folder as text_encoder.")
        with open(os.path.join(workdir, "model_config.json"), encoding="utf-8") as f:
            model = CrossModalHashingModel.from_config(json.load(f))
        model.build_for_features(1)
        model.load_weights(os.path.join(workdir, "model.weights.h5"))
        return cls(features, model, build_image_encoder_from_config(features),
                   build_text_encoder(features))

    @property
    def bits(self) -> int:
        """Code length K."""
        return self.model.bits

    @property
    def image_size(self) -> int:
        """Side S of the square the image encoder sees."""
        return self.features.image_size

    def preprocess_image_bytes(self, image_bytes: bytes) -> np.ndarray:
        """Encoded image (JPEG/PNG/...) -> float32 [S, S, 3] exactly as in training."""
        return resize_image(decode_image(tf.constant(image_bytes)), self.image_size).numpy()

    def image_hash_from_pixels(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Continuous image codes float32 [N, K] from float pixels [N, S, S, 3] in [0, 255]."""
        pixels = np.asarray(pixels, np.float32)
        parts = [np.zeros((0, self.bits), np.float32)]
        for start in range(0, len(pixels), batch_size):
            features = self._image_features(tf.constant(pixels[start:start + batch_size]))
            parts.append(np.asarray(self.model.encode_image(features, training=False), np.float32))
        return np.concatenate(parts)

    def image_hash_from_bytes(self, images: Sequence[bytes], batch_size: int = 32) -> np.ndarray:
        """Continuous image codes float32 [N, K] from encoded images of any size."""
        parts = [np.zeros((0, self.bits), np.float32)]
        for start in range(0, len(images), batch_size):
            pixels = np.stack([self.preprocess_image_bytes(b) for b in images[start:start + batch_size]])
            parts.append(self.image_hash_from_pixels(pixels, batch_size))
        return np.concatenate(parts)

    def text_hash(self, texts: Sequence[str]) -> np.ndarray:
        """Continuous text codes float32 [N, K] from captions (none may be empty)."""
        if not len(texts):
            return np.zeros((0, self.bits), np.float32)
        features = self.text_encoder.encode(list(texts))
        return np.asarray(self.model.encode_text(features, training=False), np.float32)
