"""Runs the frozen encoders over a dataset once and fills a `FeatureStore`.

Work is cut into shards that are saved as they finish (`<store>/shards/`), so a killed
extraction resumes where it stopped without redoing finished shards. Images are read,
decoded and augmented by a parallel tf.data pipeline that prefetches while the encoder
runs. Captions are deduplicated before encoding (RSICD repeats many sentences), which
saves a large share of the text encoder's work. A file that cannot be decoded, or that is
above the pixel limit (`max_pixels`, checked from its header before it is decoded),
stops the run with the names of every bad image in its shard; so does an image the
augmenter refuses (smaller than 4 x 4 px), named by its file.

Memory is bounded for any image: `image_pipeline.reduce_image` area-reduces an image
above 4 S^2 px in uint8 before the augmenter and the float resize see it (images at or
under 4 S^2 px, e.g. RSICD's 150 px at S = 224, are untouched), and the pipeline decodes
a few images at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm.auto import tqdm

from rs_hashing.atomic_files import save_array_atomic, write_json_atomic
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.errors import DatasetError, FeatureStoreError
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.features.image_pipeline import (
    ENCODED_FORMATS, MAX_IMAGE_PIXELS, is_raster_path, load_pixels, raster_size, read_raster, reduce_image,
    resize_image, too_many_pixels)
from rs_hashing.geo.radiometry import Radiometry


@dataclasses.dataclass
class ExtractionReport:
    seconds: float
    images_per_second: float
    captions_per_second: float
    unique_captions: int
    shards_reused: int
    shards_computed: int


# Pillow's names of the formats TensorFlow decodes (MPO: a camera JPEG with a preview).
_PILLOW_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP")


def find_bad_images(paths: Sequence[str], max_pixels: int | None = MAX_IMAGE_PIXELS) -> list[str]:
    """Checks each file as the pipeline does (format and pixel count from the header,
    before anything is decoded), then decodes it fully (TIFFs with rasterio, others with
    Pillow); returns 'path: reason' for the failures."""
    bad = []
    for path in paths:
        try:
            if is_raster_path(path):
                width, height = raster_size(path)
                if max_pixels is not None and width * height > max_pixels:
                    bad.append(too_many_pixels(path, width, height, max_pixels))
                else:
                    read_raster(path)
                continue
            with warnings.catch_warnings():  # The size is checked below, against our limit.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    width, height = image.size
                    if image.format not in _PILLOW_FORMATS:
                        bad.append(f"{path}: not a readable {ENCODED_FORMATS} image ({image.format})")
                    elif max_pixels is not None and width * height > max_pixels:
                        bad.append(too_many_pixels(path, width, height, max_pixels))
                    else:
                        image.convert("RGB").load()
        except FileNotFoundError:
            bad.append(f"{path}: file not found")
        except Image.DecompressionBombError as e:
            bad.append(f"{path}: above the limit of {max_pixels or MAX_IMAGE_PIXELS:,} px for one image ({e})")
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image.
            bad.append(f"{path}: {type(e).__name__}: {e}")
    return bad


def _failure_naming(message: str, paths: Sequence[str]) -> str | None:
    """The line of a pipeline error message that starts with one of `paths` (the
    augmenter's and the header checks' messages do), else None."""
    for path in sorted(set(paths), key=len, reverse=True):
        start = message.find(f"{path}: ")
        if start >= 0:
            end = message.find("\n", start)
            return message[start:end if end >= 0 else len(message)].rstrip().rstrip("]")
    return None


@contextlib.contextmanager
def bad_images_named(paths: Sequence[str], limit: int = 20,
                     max_pixels: int | None = MAX_IMAGE_PIXELS) -> Iterator[None]:
    """Turns a failure inside the block (a tf.data image pipeline over `paths`) into a
    DatasetError that names every bad file (the first `limit` of them), or the file
    that the error message names (an image the augmenter refused)."""
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError) as e:
        bad = find_bad_images(paths, max_pixels)
        if bad:
            raise DatasetError(f"{len(bad)} image(s) cannot be decoded:\n  " + "\n  ".join(bad[:limit])) from e
        named = _failure_naming(e.message, paths)
        if named is None:
            raise
        raise DatasetError(f"1 image cannot be used:\n  {named}") from e


class FeatureExtractor:
    """Extracts image, augmented-image, caption and augmented-caption features.

    Args:
      image_encoder: Keras model, float [N, S, S, 3] pixels in [0, 255] -> [N, Di] (or
        a frozen bottom's activations [N, ...], tower mode).
      text_encoder: object with `encode(list[str], batch_size) -> [M, Dt]`, or (tower
        mode) returning {"states": [M, T, H], "padding_mask": [M, T]}; the store then
        holds `text_mask` and `text_aug_mask` as well, trimmed to the longest caption.
      image_size: side S of the encoder's input.
      augment_image: uint8 [H, W, 3] image and an item seed -> augmented uint8 image.
      augment_caption: caption and an item seed -> augmented caption.
      batch_size: encoder batch size.
      shard_size: images (or unique captions) per saved shard.
      progress: show progress bars.
      radiometry: the radiometric contract of 16-bit images (default: the fixed one).
      max_pixels: an image above this many pixels is refused, from its header, before
        it is decoded (None: no limit; TIFFs keep the raster reader's limit).
      dtype: dtype of the encoders' outputs in shards and store (cached activations are
        float16 by default, see `FeatureConfig.activation_dtype`).
    """

    def __init__(self, image_encoder, text_encoder, image_size: int,
                 augment_image: Callable[[np.ndarray, int], np.ndarray],
                 augment_caption: Callable[[str, int], str], batch_size: int = 64,
                 shard_size: int = 1000, text_batch_size: int = 256, progress: bool = True,
                 radiometry: Radiometry | None = None, max_pixels: int | None = MAX_IMAGE_PIXELS,
                 dtype: str = "float32"):
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                       or max_pixels < 1):
            raise ValueError(f"FeatureExtractor: max_pixels={max_pixels!r} must be a positive integer or None")
        if shard_size % batch_size:
            shard_size = (shard_size // batch_size + 1) * batch_size
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_size = image_size
        self.augment_image = augment_image
        self.augment_caption = augment_caption
        self.batch_size = batch_size
        self.shard_size = shard_size
        self.text_batch_size = text_batch_size
        self.progress = progress
        self.radiometry = radiometry or Radiometry()
        self.max_pixels = max_pixels
        self.dtype = np.dtype(dtype)
        self._encode = tf.function(lambda x: image_encoder(x, training=False), reduce_retracing=True)

    # ---------------------------------------------------------------- images
    def _image_dataset(self, paths: Sequence[str], first_index: int) -> tf.data.Dataset:
        size = self.image_size

        def augment(image, index, path):
            try:
                return self.augment_image(image, int(index)).astype(np.uint8)
            except Exception as e:  # noqa: BLE001 - the file must be named, whatever failed.
                height, width = image.shape[:2]
                raise ValueError(f"{path.decode('utf-8', 'replace')}: the image augmenter cannot use this "
                                 f"{width} x {height} px image ({type(e).__name__}: {e})") from e

        def load(path, index):
            # Reduced (in uint8) before the augmenter and the float resize: a large image
            # never gets a float copy; an image at or under 4 S^2 px is passed unchanged.
            image = reduce_image(load_pixels(path, self.radiometry, self.max_pixels), size)
            augmented = tf.numpy_function(augment, [image, index, path], tf.uint8, stateful=False)
            augmented.set_shape([None, None, 3])
            return resize_image(image, size), resize_image(augmented, size)

        indices = tf.range(first_index, first_index + len(paths), dtype=tf.int64)
        dataset = tf.data.Dataset.from_tensor_slices((list(paths), indices))
        return (dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(self.batch_size).prefetch(tf.data.AUTOTUNE))

    def _image_shard(self, dataset: CaptionDataset, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        paths = [dataset.image_path(i) for i in range(start, stop)]
        originals, augmented = [], []
        with bad_images_named(paths, limit=len(paths), max_pixels=self.max_pixels):
            for images, images_aug in self._image_dataset(paths, start):
                originals.append(self._encode(images).numpy().astype(self.dtype))
                augmented.append(self._encode(images_aug).numpy().astype(self.dtype))
        return np.concatenate(originals), np.concatenate(augmented)

    # -------------------------------------------------------------- captions
    def augmented_captions(self, texts: Sequence[str]) -> list[str]:
        return [self.augment_caption(text, i) for i, text in enumerate(texts)]

    def _encode_texts(self, unique: list[str], shard_dir: str, bar) -> dict[str, np.ndarray]:
        """{"features": [U, Dt]} of the unique captions, or the text bottom's
        {"states": [U, T, H], "padding_mask": [U, T]} (tower mode)."""
        parts: dict[str, list[np.ndarray]] = {}
        for s, start in enumerate(range(0, len(unique), self.shard_size * 4)):
            chunk = unique[start:start + self.shard_size * 4]
            path = os.path.join(shard_dir, f"text_{s:05d}.npy")
            mask_path = os.path.join(shard_dir, f"text_mask_{s:05d}.npy")
            if os.path.exists(path):
                encoded = {"features": np.load(path)}
                if os.path.exists(mask_path):
                    encoded = {"states": encoded["features"], "padding_mask": np.load(mask_path)}
            else:
                output = self.text_encoder.encode(chunk, batch_size=self.text_batch_size)
                if isinstance(output, dict):
                    encoded = {"states": np.asarray(output["states"], self.dtype),
                               "padding_mask": np.asarray(output["padding_mask"], np.int8)}
                    # The mask first: a shard counts as done once its states are saved.
                    save_array_atomic(mask_path, encoded["padding_mask"])
                    save_array_atomic(path, encoded["states"])
                else:
                    encoded = {"features": np.asarray(output, self.dtype)}
                    save_array_atomic(path, encoded["features"])
            for name, array in encoded.items():
                parts.setdefault(name, []).append(array)
            bar.update(len(chunk))
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    # ------------------------------------------------------------------ run
    def extract(self, dataset: CaptionDataset, out_dir: str, info: dict | None = None) -> FeatureStore:
        """Fills `out_dir`, reusing finished shards of an earlier, killed run."""
        started = time.perf_counter()
        shard_dir = os.path.join(out_dir, "shards")
        os.makedirs(shard_dir, exist_ok=True)
        self._check_resume_key(out_dir, dataset, info or {})

        n = len(dataset)
        image_parts, image_aug_parts = [], []
        reused = computed = images_done = 0
        image_seconds = 0.0
        with tqdm(total=n, desc="images", unit="img", disable=not self.progress) as bar:
            for s, start in enumerate(range(0, n, self.shard_size)):
                stop = min(n, start + self.shard_size)
                paths = [os.path.join(shard_dir, f"{kind}_{s:05d}.npy") for kind in ("image", "image_aug")]
                if all(os.path.exists(p) for p in paths):
                    features, features_aug = (np.load(p) for p in paths)
                    reused += 1
                else:
                    t = time.perf_counter()
                    features, features_aug = self._image_shard(dataset, start, stop)
                    image_seconds += time.perf_counter() - t
                    images_done += stop - start
                    for path, array in zip(paths, (features, features_aug)):
                        save_array_atomic(path, array)
                    computed += 1
                image_parts.append(features)
                image_aug_parts.append(features_aug)
                bar.update(stop - start)

        texts, _ = dataset.flat_captions()
        texts_aug = self.augmented_captions(texts)
        unique = sorted(set(texts) | set(texts_aug))
        position = {t: i for i, t in enumerate(unique)}
        t = time.perf_counter()
        with tqdm(total=len(unique), desc="captions", unit="cap", disable=not self.progress) as bar:
            unique_encoded = self._encode_texts(unique, shard_dir, bar)
        text_seconds = time.perf_counter() - t
        rows, rows_aug = [position[x] for x in texts], [position[x] for x in texts_aug]
        arrays = {"image": np.concatenate(image_parts), "image_aug": np.concatenate(image_aug_parts)}
        if "states" in unique_encoded:
            # Token columns that are padding in every caption are cut off: the top masks
            # padding, so they change nothing but the store's size.
            masks = unique_encoded["padding_mask"]
            longest = max(int(masks.sum(axis=1).max(initial=0)), 1)
            states = unique_encoded["states"][:, :longest]
            arrays.update({"text": states[rows], "text_aug": states[rows_aug],
                           "text_mask": masks[rows, :longest], "text_aug_mask": masks[rows_aug, :longest]})
        else:
            arrays.update({"text": unique_encoded["features"][rows], "text_aug": unique_encoded["features"][rows_aug]})
        write_json_atomic(os.path.join(out_dir, "captions.json"), {"text": texts, "text_aug": texts_aug})
        seconds = time.perf_counter() - started
        report = ExtractionReport(
            seconds=seconds,
            # Originals and augmented views both pass through the encoder.
            images_per_second=2 * images_done / image_seconds if images_done else 0.0,
            captions_per_second=len(unique) / max(text_seconds, 1e-9),
            unique_captions=len(unique), shards_reused=reused, shards_computed=computed)
        manifest = dict(info or {})
        manifest["extraction"] = dataclasses.asdict(report)
        manifest["augmented_caption_changed_fraction"] = float(np.mean([a != b for a, b in zip(texts, texts_aug)]))
        FeatureStore.write(out_dir, arrays, dataset, manifest)
        shutil.rmtree(shard_dir)  # The store is complete; shards only served resuming.
        self.report = report
        return FeatureStore.open(out_dir, dataset)

    def seed_shards(self, dataset: CaptionDataset, out_dir: str, info: dict, source: FeatureStore,
                    images: bool, texts: bool) -> None:
        """Writes, from `source` (a complete store of the same data, encoders and
        augmenters), the shards `extract` would compute for its images and/or its
        captions, so that `extract` reuses them: for a store whose encoders are cut as
        another store's on one side (e.g. both tops, from a store with the image top and
        one with the text top). The caller checks that `source` was made so; its arrays
        must be in this extraction's dtype or float32 (cast as `extract` casts)."""
        shard_dir = os.path.join(out_dir, "shards")
        os.makedirs(shard_dir, exist_ok=True)
        self._check_resume_key(out_dir, dataset, info)
        for name in (("image", "image_aug") if images else ()) + (("text", "text_aug") if texts else ()):
            kind = np.asarray(getattr(source, name)[:1]).dtype
            if kind not in (self.dtype, np.float32):
                raise FeatureStoreError(f"{source.path}/{name}.npy: {kind}, cannot give {self.dtype} shards")
        if images:
            for s, start in enumerate(range(0, len(dataset), self.shard_size)):
                for name in ("image", "image_aug"):
                    path = os.path.join(shard_dir, f"{name}_{s:05d}.npy")
                    if not os.path.exists(path):
                        rows = getattr(source, name)[start:start + self.shard_size]
                        save_array_atomic(path, np.asarray(rows, self.dtype))
        if not texts:
            return
        captions = {"text": dataset.flat_captions()[0]}
        captions["text_aug"] = self.augmented_captions(captions["text"])
        with open(os.path.join(source.path, "captions.json"), encoding="utf-8") as f:
            if json.load(f) != captions:
                raise FeatureStoreError(f"{source.path}/captions.json: other captions or augmented captions than "
                                        "this extraction's; its caption features cannot be reused")
        unique = sorted(set(captions["text"]) | set(captions["text_aug"]))
        position = {t: i for i, t in enumerate(unique)}
        states = np.zeros((len(unique), *source.text.shape[1:]), self.dtype)
        masks = None if source.text_mask is None else np.zeros((len(unique), source.text_mask.shape[1]), np.int8)
        for name in ("text", "text_aug"):
            rows = np.array([position[t] for t in captions[name]])
            states[rows] = getattr(source, name)
            if masks is not None:
                masks[rows] = getattr(source, f"{name}_mask")
        size = self.shard_size * 4  # unique captions a shard, as `_encode_texts` cuts them
        for s, start in enumerate(range(0, len(unique), size)):
            if masks is not None:  # The mask first, as `_encode_texts` writes them.
                save_array_atomic(os.path.join(shard_dir, f"text_mask_{s:05d}.npy"), masks[start:start + size])
            save_array_atomic(os.path.join(shard_dir, f"text_{s:05d}.npy"), states[start:start + size])

    @staticmethod
    def _check_resume_key(out_dir: str, dataset: CaptionDataset, info: dict) -> None:
        """Shards from a run with other data or encoders must never be mixed in."""
        key = {"fingerprint": dataset.fingerprint(), "info": json.loads(json.dumps(info, sort_keys=True))}
        path = os.path.join(out_dir, "shards", "resume_key.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
            if previous != key:
                raise DatasetError(
                    f"{out_dir}: holds shards of another extraction (other data or encoder settings); "
                    "choose a new output folder or delete it")
        else:
            write_json_atomic(path, key)
