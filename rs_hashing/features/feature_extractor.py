"""Runs the frozen encoders over a dataset once and fills a `FeatureStore`.

Work is cut into shards that are saved as they finish (`<store>/shards/`), so a killed
extraction resumes where it stopped without redoing finished shards. Images are read,
decoded and augmented by a parallel tf.data pipeline that prefetches while the encoder
runs. Captions are deduplicated before encoding (RSICD repeats many sentences), which
saves a large share of the text encoder's work. A file that cannot be decoded stops the
run with the names of every bad image in its shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm.auto import tqdm

from rs_hashing.atomic_files import save_array_atomic, write_json_atomic
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.errors import DatasetError
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.features.image_pipeline import is_raster_path, load_pixels, read_raster, resize_image
from rs_hashing.geo.radiometry import Radiometry


@dataclasses.dataclass
class ExtractionReport:
    seconds: float
    images_per_second: float
    captions_per_second: float
    unique_captions: int
    shards_reused: int
    shards_computed: int


def find_bad_images(paths: Sequence[str]) -> list[str]:
    """Fully decodes each file (TIFFs with rasterio, others with Pillow) and returns
    'path: reason' for the failures."""
    bad = []
    for path in paths:
        try:
            if is_raster_path(path):
                read_raster(path)
                continue
            with Image.open(path) as image:
                image.convert("RGB").load()
        except FileNotFoundError:
            bad.append(f"{path}: file not found")
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image.
            bad.append(f"{path}: {type(e).__name__}: {e}")
    return bad


@contextlib.contextmanager
def bad_images_named(paths: Sequence[str], limit: int = 20) -> Iterator[None]:
    """Turns a decoding failure inside the block (a tf.data image pipeline over `paths`)
    into a DatasetError that names every bad file (the first `limit` of them)."""
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError) as e:
        bad = find_bad_images(paths)
        if not bad:
            raise
        raise DatasetError(f"{len(bad)} image(s) cannot be decoded:\n  " + "\n  ".join(bad[:limit])) from e


class FeatureExtractor:
    """Extracts image, augmented-image, caption and augmented-caption features.

    Args:
      image_encoder: Keras model, float [N, S, S, 3] pixels in [0, 255] -> [N, Di].
      text_encoder: object with `encode(list[str], batch_size) -> [M, Dt]`.
      image_size: side S of the encoder's input.
      augment_image: uint8 [H, W, 3] image and an item seed -> augmented uint8 image.
      augment_caption: caption and an item seed -> augmented caption.
      batch_size: encoder batch size.
      shard_size: images (or unique captions) per saved shard.
      progress: show progress bars.
      radiometry: the radiometric contract of 16-bit images (default: the fixed one).
    """

    def __init__(self, image_encoder, text_encoder, image_size: int,
                 augment_image: Callable[[np.ndarray, int], np.ndarray],
                 augment_caption: Callable[[str, int], str], batch_size: int = 64,
                 shard_size: int = 1000, text_batch_size: int = 256, progress: bool = True,
                 radiometry: Radiometry | None = None):
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
        self._encode = tf.function(lambda x: image_encoder(x, training=False), reduce_retracing=True)

    # ---------------------------------------------------------------- images
    def _image_dataset(self, paths: Sequence[str], first_index: int) -> tf.data.Dataset:
        size = self.image_size

        def augment(image, index):
            return self.augment_image(image, int(index)).astype(np.uint8)

        def load(path, index):
            image = load_pixels(path, self.radiometry)
            augmented = tf.numpy_function(augment, [image, index], tf.uint8, stateful=False)
            augmented.set_shape([None, None, 3])
            return resize_image(image, size), resize_image(augmented, size)

        indices = tf.range(first_index, first_index + len(paths), dtype=tf.int64)
        dataset = tf.data.Dataset.from_tensor_slices((list(paths), indices))
        return (dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(self.batch_size).prefetch(tf.data.AUTOTUNE))

    def _image_shard(self, dataset: CaptionDataset, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        paths = [dataset.image_path(i) for i in range(start, stop)]
        originals, augmented = [], []
        with bad_images_named(paths, limit=len(paths)):
            for images, images_aug in self._image_dataset(paths, start):
                originals.append(self._encode(images).numpy())
                augmented.append(self._encode(images_aug).numpy())
        return np.concatenate(originals), np.concatenate(augmented)

    # -------------------------------------------------------------- captions
    def augmented_captions(self, texts: Sequence[str]) -> list[str]:
        return [self.augment_caption(text, i) for i, text in enumerate(texts)]

    def _encode_texts(self, unique: list[str], shard_dir: str, bar) -> np.ndarray:
        parts = []
        for s, start in enumerate(range(0, len(unique), self.shard_size * 4)):
            chunk = unique[start:start + self.shard_size * 4]
            path = os.path.join(shard_dir, f"text_{s:05d}.npy")
            if os.path.exists(path):
                parts.append(np.load(path))
            else:
                parts.append(np.asarray(self.text_encoder.encode(chunk, batch_size=self.text_batch_size), np.float32))
                save_array_atomic(path, parts[-1])
            bar.update(len(chunk))
        return np.concatenate(parts)

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
            unique_features = self._encode_texts(unique, shard_dir, bar)
        text_seconds = time.perf_counter() - t
        arrays = {
            "image": np.concatenate(image_parts),
            "image_aug": np.concatenate(image_aug_parts),
            "text": unique_features[[position[x] for x in texts]],
            "text_aug": unique_features[[position[x] for x in texts_aug]],
        }
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
