"""A trained run, ready to turn sentences and images into hash codes.

`HashingModel.from_run(run_dir)` is the one path from a run folder to codes: search,
archive indexing, the SavedModel and TFLite exports, the demo and the Python API all go
through it. It holds the run's configuration, its trained hash heads and the frozen
encoders its features were made with, and checks that the installed encoder weights are
the ones the run recorded (`encoders.json`).

    model = HashingModel.from_run("runs/duch64")
    text_codes = model.encode_texts(["a bridge over a river"])      # Codes
    image_codes = model.encode_images(["scene1.jpg", "scene2.png"])  # Codes
    text_codes.codes   # int8 +-1 [N, K];  text_codes.packed: uint8 [N, K/8]

Training itself never needs this: it reads features that the frozen encoders computed
once (`rs_hashing.features`).

A run that fine-tuned the top of an encoder (tower mode, `model.image_trainable_stages`
or `model.text_trainable_layers` above 0) keeps the tuned top inside its heads'
model; its codes are then the frozen bottom, the tuned top and the head, in that order,
on every path here and in the exports.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from rs_hashing import config as config_lib
from rs_hashing.codes import Codes
from rs_hashing.encoders.encoder_towers import EncoderTowers
from rs_hashing.encoders.frozen_encoders import FrozenEncoders
from rs_hashing.errors import DatasetError, RunFolderError
from rs_hashing.features.feature_extractor import bad_images_named
from rs_hashing.features.image_pipeline import decode_image, load_image, radiometry_of, resize_image
from rs_hashing.geo.raster_image import read_raster_image
from rs_hashing.image_files import IMAGE_EXTENSIONS, is_image_file
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel

# What `train` leaves in a finished run folder and what loading it needs.
RUN_FILES = ("config.json", "model_config.json", "model.weights.h5")
# The identity (package, version, weights fingerprint) of the encoders the run's
# features were made with.
ENCODERS_FILE = "encoders.json"


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of sentences, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {i} is empty or not a string: {text!r}")
    return texts


class HashingModel:
    """The image and text encoding paths of one trained run, from raw inputs to codes.

    Args:
        run_dir: the run folder.
        config: its configuration.
        heads: the trained `CrossModalHashingModel` (image and text hash heads, and the
            tuned encoder tops of a run in tower mode).
        encoders: the frozen encoders of `config.features`.

    Use `from_run` to load one; the constructor checks nothing on disk.
    """

    def __init__(self, run_dir: str, config: config_lib.Config, heads: CrossModalHashingModel,
                 encoders: FrozenEncoders):
        if not encoders.computes(config.features):
            raise ValueError(f"{run_dir}: the encoders given were built for other feature settings "
                             "than the run's config.json")
        self.run_dir = run_dir
        self.config = config
        self.heads = heads
        self.encoders = encoders
        # How 16-bit images (16-bit PNG, GeoTIFF) become 8-bit input, as in training.
        self.radiometry = radiometry_of(config.features)
        # The frozen bottoms, cut where the run's tuned tops (inside `heads`) start.
        self.towers = EncoderTowers.of_config(config, encoders)
        for name, tower, count in (("image", heads.image_tower, self.towers.image_stages),
                                   ("text", heads.text_tower, self.towers.text_layers)):
            if (tower is not None) != bool(count):
                raise ValueError(f"{run_dir}: the {name} encoder is {'cut' if count else 'frozen'} in config.json, "
                                 f"but the trained model {'has no' if tower is None else 'has a'} {name} tower")
        self._fingerprint = None
        self._image_function = None
        self._text_function = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_run(cls, run_dir: str, encoders: FrozenEncoders | None = None,
                 check_encoders: bool = True) -> "HashingModel":
        """Loads a finished run folder.

        Args:
            run_dir: the folder `train` wrote (config.json, model_config.json,
                model.weights.h5, encoders.json).
            encoders: already built encoders of the run's feature settings, to reuse
                (the demo passes the ones that extracted its features).
            check_encoders: compare the installed encoder weights with the ones the run
                recorded.

        Raises:
            RunFolderError: the folder lacks one of `RUN_FILES` (all are named) or one
                is unreadable.
            EncoderMismatchError: the installed encoder weights differ from the run's.
        """
        run_dir = os.fspath(run_dir)
        if not os.path.isdir(run_dir):
            raise RunFolderError(f"{run_dir}: run folder does not exist")
        missing = [name for name in RUN_FILES if not os.path.isfile(os.path.join(run_dir, name))]
        if missing:
            raise RunFolderError(
                f"{run_dir}: not a finished run folder, {', '.join(missing)} missing "
                "(`rs-hashing train` writes them when training ends)")
        try:
            config = config_lib.load_config(run_dir)
            with open(os.path.join(run_dir, "model_config.json"), encoding="utf-8") as f:
                heads = CrossModalHashingModel.from_config(json.load(f))
        except (ValueError, KeyError, TypeError) as e:
            raise RunFolderError(f"{run_dir}: {e}") from None
        heads.build_for_features(1)
        try:
            heads.load_weights(os.path.join(run_dir, "model.weights.h5"))
        except (OSError, ValueError) as e:
            raise RunFolderError(f"{run_dir}/model.weights.h5: cannot be loaded ({e})") from None
        encoders = encoders or FrozenEncoders(config.features)
        model = cls(run_dir, config, heads, encoders)
        if check_encoders:
            recorded = model.recorded_encoders()
            if recorded is not None:
                from rs_hashing.encoders.encoder_identity import check_encoder_identity  # pylint: disable=import-outside-toplevel

                check_encoder_identity(recorded, encoders.identity(), run_dir)
        return model

    def recorded_encoders(self) -> dict | None:
        """The encoder identity the run recorded (encoders.json), or None for runs made
        before it was recorded."""
        path = os.path.join(self.run_dir, ENCODERS_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    # ------------------------------------------------------------------ metadata

    @property
    def bits(self) -> int:
        """Code length K."""
        return int(self.heads.bits)

    @property
    def image_size(self) -> int:
        """Side S of the square the image encoder sees."""
        return self.config.features.image_size

    @property
    def features(self) -> config_lib.FeatureConfig:
        return self.config.features

    @property
    def image_encoder(self) -> keras.Model:
        """The frozen image encoder: float pixels [N, S, S, 3] in [0, 255] -> features,
        or, for a run with a tuned image top, the frozen bottom -> the activations the
        top (in `heads.encode_image`) takes."""
        if self.heads.image_tower is not None:
            bottom = self.towers.image_bottom
            made, takes = tuple(bottom.output_shape[1:]), tuple(self.heads.image_tower.input_shape[1:])
            if made != takes:
                raise ValueError(
                    f"image encoder '{self.features.image_encoder}' cut at {self.towers.image_stages} stage(s) gives "
                    f"{made} activations but the image tower of {self.run_dir} takes {takes}")
            return bottom
        encoder = self.encoders.image
        width = int(encoder.output_shape[-1])
        if width != self.heads.image_dim:
            raise ValueError(
                f"image encoder '{self.features.image_encoder}' gives {width}-d features but the "
                f"image head of {self.run_dir} was trained on {self.heads.image_dim}-d features")
        return encoder

    @property
    def text_encoder(self):
        """The frozen text encoder: captions -> features."""
        encoder = self.encoders.text
        if encoder.output_dim != self.heads.text_dim:
            raise ValueError(
                f"text encoder '{self.features.text_encoder}' gives {encoder.output_dim}-d features "
                f"but the text head of {self.run_dir} was trained on {self.heads.text_dim}-d features")
        return encoder

    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the trained heads' weights file: an index
        records it, so that codes of another model are never mixed in or compared."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            with open(os.path.join(self.run_dir, "model.weights.h5"), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def metadata(self) -> dict[str, Any]:
        """What a search service or an index records about the model."""
        metrics_path = os.path.join(self.run_dir, "metrics.json")
        metrics = {}
        if os.path.isfile(metrics_path):
            with open(metrics_path, encoding="utf-8") as f:
                metrics = {k: v for k, v in json.load(f).items() if k.startswith("map@")}
        return {"run_dir": os.path.abspath(self.run_dir), "method": self.config.model.method,
                "bits": self.bits, "image_size": self.image_size, "dataset": self.config.data.dataset,
                "weights": self.fingerprint(), "encoders": self.recorded_encoders(),
                "metrics": metrics}

    def check_exportable(self) -> None:
        """Raises ValueError (naming the run) when the run's encoders were random and never
        saved, so that no export could reproduce its features."""
        reason = self.encoders.unsaved_reason()
        if reason:
            raise ValueError(f"{self.run_dir}: {reason}")

    # ------------------------------------------------------------------ continuous outputs

    def text_hash(self, texts: Sequence[str]) -> np.ndarray:
        """Continuous text codes float32 [N, K] from sentences.

        Raises:
            ValueError: an empty or whitespace-only sentence (named by its index).
        """
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.bits), np.float32)
        if self.heads.text_tower is None:
            features = self.text_encoder.encode(texts)
            return np.asarray(self.heads.encode_text(features, training=False), np.float32)
        if self._text_function is None:
            self.build_encoders()
            self._text_function = tf.function(self.text_hash_graph, reduce_retracing=True)
        batch = self.config.features.encode_batch_size
        return np.concatenate([np.asarray(self._text_function(tf.constant(texts[start:start + batch])), np.float32)
                               for start in range(0, len(texts), batch)])

    # ------------------------------------------------------------------ graph functions (exports)

    def build_encoders(self) -> None:
        """Builds the encoders, and the bottoms of a tuned run, now: the graph functions
        below need them built before they are traced (weights cannot be loaded inside a
        trace)."""
        self.image_encoder  # pylint: disable=pointless-statement
        self.text_encoder  # pylint: disable=pointless-statement
        if self.heads.text_tower is not None:
            self.towers.text_bottom  # pylint: disable=pointless-statement

    def image_hash_graph(self, pixels: tf.Tensor) -> tf.Tensor:
        """Graph-friendly: float pixels [N, S, S, 3] in [0, 255] -> continuous codes
        [N, K] (the frozen encoder or bottom, the tuned top if any, the head)."""
        return self.heads.encode_image(self.image_encoder(pixels, training=False), training=False)

    def text_hash_graph(self, texts: tf.Tensor) -> tf.Tensor:
        """Graph-friendly: a [N] string batch -> continuous codes [N, K], tokenised in
        graph (empty captions fail; see `TextEncoder.__call__`)."""
        if self.heads.text_tower is None:
            return self.heads.encode_text(self.text_encoder(texts), training=False)
        states, padding_mask = self.towers.text_inputs(texts)
        return self.heads.encode_text(states, training=False, padding_mask=padding_mask)

    def token_hash_graph(self, token_ids: tf.Tensor, padding_mask: tf.Tensor) -> tf.Tensor:
        """Graph-friendly: int32 token ids and padding mask [N, T] (from
        `TextEncoder.tokenize`) -> continuous codes [N, K]; the TFLite text model."""
        tokens = {"token_ids": token_ids, "padding_mask": padding_mask}
        if self.heads.text_tower is None:
            return self.heads.encode_text(self.text_encoder.token_model()(tokens, training=False), training=False)
        return self.heads.encode_text(self.towers.text_bottom(tokens, training=False), training=False,
                                      padding_mask=padding_mask)

    def preprocess_image_bytes(self, image_bytes: bytes) -> np.ndarray:
        """Encoded image (JPEG/PNG/.../TIFF) -> float32 [S, S, 3], exactly as in training."""
        if image_bytes[:4] in (b"II*\x00", b"MM\x00*"):  # TIFF: rasterio, as for files
            pixels = tf.constant(read_raster_image(image_bytes, self.radiometry))
        else:
            pixels = decode_image(tf.constant(image_bytes), self.radiometry)
        return resize_image(pixels, self.image_size).numpy()

    def _pixels_to_hash(self):
        if self._image_function is None:
            # The feature extractor runs the encoder through a tf.function in inference
            # mode; so does this path, so that its numbers are training's.
            self.build_encoders()
            self._image_function = tf.function(self.image_hash_graph, reduce_retracing=True)
        return self._image_function

    def image_hash_from_pixels(self, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Continuous image codes float32 [N, K] from float pixels [N, S, S, 3] in [0, 255]."""
        pixels = np.asarray(pixels, np.float32)
        batch_size = batch_size or self.config.features.encode_batch_size
        encode = self._pixels_to_hash()
        parts = [np.zeros((0, self.bits), np.float32)]
        for start in range(0, len(pixels), batch_size):
            parts.append(np.asarray(encode(tf.constant(pixels[start:start + batch_size])), np.float32))
        return np.concatenate(parts)

    def image_hash_from_bytes(self, images: Sequence[bytes], batch_size: int | None = None) -> np.ndarray:
        """Continuous image codes float32 [N, K] from encoded images of any size."""
        if not len(images):
            return np.zeros((0, self.bits), np.float32)
        pixels = np.stack([self.preprocess_image_bytes(data) for data in images])
        return self.image_hash_from_pixels(pixels, batch_size)

    def image_hash_from_files(self, paths: Sequence[str], batch_size: int | None = None,
                              progress: bool = False) -> np.ndarray:
        """Continuous image codes float32 [N, K] of image files, read and resized in a
        parallel pipeline as for training.

        Raises:
            DatasetError: files that are missing or cannot be decoded, all named.
        """
        paths = [os.fspath(p) for p in paths]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DatasetError(f"{len(missing)} image file(s) not found: {', '.join(missing[:5])}"
                               + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else ""))
        not_images = [p for p in paths if not is_image_file(p)]
        if not_images:
            raise DatasetError(f"{len(not_images)} file(s) are not images ({', '.join(IMAGE_EXTENSIONS)}): "
                               f"{', '.join(not_images[:5])}")
        if not paths:
            return np.zeros((0, self.bits), np.float32)
        batch_size = batch_size or self.config.features.encode_batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        encode, size = self._pixels_to_hash(), self.image_size
        dataset = (tf.data.Dataset.from_tensor_slices(paths)
                   .map(lambda path: load_image(path, size, self.radiometry), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
                   .batch(batch_size).prefetch(tf.data.AUTOTUNE))
        parts = []
        with tqdm(total=len(paths), desc="images", unit="img", disable=not progress) as bar, \
                bad_images_named(paths):
            for pixels in dataset:
                parts.append(np.asarray(encode(pixels), np.float32))
                bar.update(int(pixels.shape[0]))
        return np.concatenate(parts)

    # ------------------------------------------------------------------ codes

    def encode_texts(self, texts: Sequence[str]) -> Codes:
        """Sentences -> codes (int8 +-1 [N, K] and packed bytes)."""
        return Codes.from_hash(self.text_hash(texts))

    def encode_images(self, images: Any, batch_size: int | None = None, progress: bool = False) -> Codes:
        """Images -> codes (int8 +-1 [N, K] and packed bytes).

        Args:
            images: image file paths (JPEG, PNG, BMP, GIF, GeoTIFF/TIFF), or uint8 or
                uint16 pixel arrays [H, W, 3] (any size; an array [N, H, W, 3] is N
                images), or PIL images; 16-bit pixels pass through the run's radiometric
                contract and every image is resized whole to S x S, exactly as in training.
            batch_size: images per encoder call (the run's encode_batch_size if None).
            progress: show a progress bar (files only).

        Raises:
            DatasetError: image files that are missing or cannot be decoded, all named.
            ValueError: an array that is not uint8 [H, W, 3].
        """
        if isinstance(images, (str, os.PathLike)):
            raise ValueError("images must be a list of images, not one path")
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        images = list(images)
        if images and all(isinstance(image, (str, os.PathLike)) for image in images):
            return Codes.from_hash(self.image_hash_from_files(images, batch_size, progress))
        pixels = [self._as_pixels(image, i) for i, image in enumerate(images)]
        if not pixels:
            return Codes.from_hash(np.zeros((0, self.bits), np.float32))
        return Codes.from_hash(self.image_hash_from_pixels(np.stack(pixels), batch_size))

    def _as_pixels(self, image: Any, position: int) -> np.ndarray:
        """One PIL image or uint8/uint16 [H, W, 3] array -> float32 [S, S, 3] as in
        training (16-bit pixels through the radiometric contract)."""
        if hasattr(image, "convert") and hasattr(image, "size"):  # A PIL image.
            image = np.asarray(image.convert("RGB"))
        array = np.asarray(image)
        if array.dtype not in (np.uint8, np.uint16) or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"image {position}: expected a file path, a PIL image or uint8/uint16 "
                             f"pixels [H, W, 3], got {array.dtype} {array.shape}")
        return resize_image(tf.constant(self.radiometry.apply(array)), self.image_size).numpy()
