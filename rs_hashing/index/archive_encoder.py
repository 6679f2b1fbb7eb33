"""Turns archive images and typed sentences into the binary codes of a trained run.

A run folder (from `train.train` or `train.demo`) holds the configuration and the hash
heads; the frozen feature encoders are rebuilt from its `features` section, and images
pass through exactly the preprocessing the training features were made with
(`rs_hashing.features.image_pipeline.load_image`). Codes are +-1 int8 [N, K], with
sign(0) = +1 as everywhere in the package.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from rs_hashing import config as config_lib
from rs_hashing.errors import DatasetError
from rs_hashing.features.extraction import build_image_encoder_from_config, build_text_encoder
from rs_hashing.features.feature_extractor import find_bad_images
from rs_hashing.features.image_pipeline import load_image
from rs_hashing.training import evaluation, trainer


def model_fingerprint(workdir: str) -> str:
    """SHA-256 (hex, first 16 characters) of a run's hash-head weights: an index
    records it so that codes of another model are never mixed into it or compared."""
    path = os.path.join(workdir, "model.weights.h5")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no trained weights (is {workdir} a finished run?)") from None
    return digest.hexdigest()[:16]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of sentences, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {i} is empty or not a string: {text!r}")
    return texts


class ArchiveEncoder:
    """Codes of images and sentences under one trained run.

    Args:
        workdir: the run folder (config.json, model_config.json, model.weights.h5).
        config: its configuration (read from the folder when None).
        model: its trained `CrossModalHashingModel` (loaded when None).

    The encoders are built on first use: a text query never builds the image encoder.
    """

    def __init__(self, workdir: str, config: config_lib.Config | None = None, model=None):
        self.workdir = workdir
        self.config = config if config is not None else config_lib.load_config(workdir)
        self.model = model if model is not None else trainer.load_trained_model(workdir)
        self._image_encoder = None
        self._text_encoder = None
        self._encode_pixels = None
        self._encode_sentences = None

    @property
    def bits(self) -> int:
        return int(self.model.bits)

    @property
    def image_size(self) -> int:
        return self.config.features.image_size

    def fingerprint(self) -> str:
        return model_fingerprint(self.workdir)

    @property
    def text_encoder(self):
        """The run's frozen text encoder (built on first use)."""
        if self._text_encoder is None:
            self._text_encoder = build_text_encoder(self.config.features)
        return self._text_encoder

    @property
    def image_encoder(self):
        """The run's frozen image encoder (built on first use)."""
        if self._image_encoder is None:
            self._image_encoder = build_image_encoder_from_config(self.config.features)
        return self._image_encoder

    # ------------------------------------------------------------------ text

    def _text_function(self):
        if self._encode_sentences is None:
            text_encoder, model = self.text_encoder, self.model

            # One graph for tokenizer, BERT and hash head: a typed query costs one call.
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def encode(texts):
                return model.encode_text(text_encoder(texts), training=False)

            self._encode_sentences = encode
        return self._encode_sentences

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Sentences -> +-1 int8 codes [N, K].

        Raises:
            ValueError: an empty or whitespace-only sentence (named by its index).
        """
        texts = _check_texts(texts)
        if not texts:
            return np.empty((0, self.bits), dtype=np.int8)
        codes = self._text_function()(tf.constant(texts, dtype=tf.string))
        return evaluation.binarize(codes.numpy())

    # ------------------------------------------------------------------ images

    def _image_function(self):
        if self._encode_pixels is None:
            encoder, model = self.image_encoder, self.model

            @tf.function(reduce_retracing=True)
            def encode(pixels):
                return model.encode_image(encoder(pixels, training=False), training=False)

            self._encode_pixels = encode
        return self._encode_pixels

    def encode_image_files(self, paths: Sequence[str], batch_size: int | None = None,
                           progress: bool = False) -> np.ndarray:
        """Image files -> +-1 int8 codes [N, K], read and resized as for training.

        Args:
            paths: image files (JPEG, PNG, BMP or GIF).
            batch_size: images per encoder call (the run's extract_batch_size if None).
            progress: show a progress bar.

        Raises:
            DatasetError: files that cannot be read or decoded, all named.
        """
        paths = [os.fspath(p) for p in paths]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DatasetError(f"{len(missing)} image file(s) not found: {', '.join(missing[:5])}"
                               + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else ""))
        if not paths:
            return np.empty((0, self.bits), dtype=np.int8)
        batch_size = batch_size or self.config.features.extract_batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        encode = self._image_function()
        size = self.image_size
        dataset = (tf.data.Dataset.from_tensor_slices(paths)
                   .map(lambda path: load_image(path, size), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
                   .batch(batch_size).prefetch(tf.data.AUTOTUNE))
        parts = []
        with tqdm(total=len(paths), desc="images", unit="img", disable=not progress) as bar:
            try:
                for pixels in dataset:
                    parts.append(encode(pixels).numpy())
                    bar.update(int(pixels.shape[0]))
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                    tf.errors.UnknownError) as e:
                bad = find_bad_images(paths)
                if not bad:
                    raise
                raise DatasetError(f"{len(bad)} image(s) cannot be decoded:\n  "
                                   + "\n  ".join(bad[:20])) from e
        return evaluation.binarize(np.concatenate(parts))
