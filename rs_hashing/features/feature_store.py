"""The on-disk store of frozen encoder features that training and evaluation read.

Layout of a store folder:

    manifest.json        encoders, dimensions, dataset fingerprint, item order, status
    image.npy            [N, Di] float32  features of the original images
    image_aug.npy        [N, Di] float32  features of the offline augmented images
    text.npy             [M, Dt] float32  features of every caption (M = all captions)
    text_aug.npy         [M, Dt] float32  features of the augmented captions
    caption_offsets.npy  [N + 1] int64    image i owns captions offsets[i]:offsets[i+1]
    labels.npy           [N] int32        scene class per image
    shards/              per-shard partial results while extraction runs (resume)

A store made for trainable encoder tops (tower mode, `rs_hashing.encoders.encoder_towers`)
caches, in the same four files, the activations entering each trainable top instead of
the features, in the dtype its manifest names (float16 by default):

    image.npy, image_aug.npy   [N, *image_shape]  the image encoder's activations at the cut
                                                  (features [N, Di] if the image side is frozen)
    text.npy, text_aug.npy     [M, T, H]          token states entering the first trainable
                                                  transformer layer (T: the longest caption)
    text_mask.npy, text_aug_mask.npy  [M, T] int8 their padding masks (1: a real token)

and its manifest's `towers` entry records the cut (trainable stages and layers, the name
of each top's first layer), the dtype and the per-item shapes; `image_dim` and
`text_dim` are then the widths of the tops' outputs, the hash heads' inputs. Stores of
frozen features have no `towers` entry and are written exactly as before.

`manifest.json` is written last, so a store without one is incomplete. `FeatureStore.open`
refuses a store made for other data (fingerprint, item count, item order), arrays of the
wrong shape or dtype, and arrays that contain NaN or infinity, each with a message
naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from rs_hashing.atomic_files import save_array_atomic, write_json_atomic
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.errors import FeatureStoreError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("image", "image_aug", "text", "text_aug")
# Padding masks of the cached token states (tower mode with a trainable text top).
MASKS = ("text_mask", "text_aug_mask")
# What `write` adds to the `towers` entry it is given: the per-item shapes of the arrays.
SHAPE_KEYS = ("image_shape", "text_shape")


# Elements checked at a time for NaN and infinity: cached activations run to gigabytes,
# and a whole-array check would hold a boolean copy of them.
_CHECK_CHUNK_ELEMENTS = 1 << 26


def _first_non_finite_row(array: np.ndarray) -> int | None:
    """The first row of `array` holding NaN or infinity, or None."""
    rows = max(1, _CHECK_CHUNK_ELEMENTS // max(1, int(np.prod(array.shape[1:]))))
    for start in range(0, len(array), rows):
        chunk = np.asarray(array[start:start + rows])
        finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not finite.all():
            return start + int(np.flatnonzero(~finite)[0])
    return None


@dataclasses.dataclass(frozen=True)
class FeatureStore:
    """Validated, memory-mapped features of one dataset.

    Attributes:
      path: the store folder.
      manifest: the parsed manifest.json.
      image, image_aug: [N, Di] features of original and augmented images.
      text, text_aug: [M, Dt] features of all captions and of their augmented versions.
      caption_offsets: [N + 1] caption ranges per image.
      labels: [N] scene classes.
      text_mask, text_aug_mask: [M, T] padding masks of cached token states (a trainable
        text top), else None.
    """

    path: str
    manifest: dict
    image: np.ndarray
    image_aug: np.ndarray
    text: np.ndarray
    text_aug: np.ndarray
    caption_offsets: np.ndarray
    labels: np.ndarray
    text_mask: np.ndarray | None = None
    text_aug_mask: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return len(self.image)

    @property
    def image_dim(self) -> int:
        """Width of the image head's input: the features, or the trainable top's output."""
        return int(self.manifest["image_dim"]) if "image_dim" in self.manifest else self.image.shape[1]

    @property
    def text_dim(self) -> int:
        """Width of the text head's input: the features, or the trainable top's output."""
        return int(self.manifest["text_dim"]) if "text_dim" in self.manifest else self.text.shape[1]

    @property
    def towers(self) -> dict | None:
        """The manifest's `towers` entry (the cut, dtype and shapes of cached
        activations), or None for a store of frozen features."""
        return self.manifest.get("towers")

    def cut(self) -> tuple[int, int]:
        """(image_trainable_stages, text_trainable_layers) this store caches the
        activations for; (0, 0) for frozen features."""
        towers = self.towers or {}
        return int(towers.get("image_trainable_stages", 0)), int(towers.get("text_trainable_layers", 0))

    @staticmethod
    def write(path: str, arrays: dict[str, np.ndarray], dataset: CaptionDataset, info: dict) -> str:
        """Writes the final arrays and then the manifest (which marks the store complete).

        A store of activations for trainable tops has `info["towers"]`: the cut, `dtype`
        (of the four view arrays) and `image_dim` / `text_dim` (the tops' output widths);
        its arrays may have any per-item shape, and `arrays` then holds `text_mask` and
        `text_aug_mask` when the text side is cut. Otherwise the arrays are float32
        features [items, dim]."""
        os.makedirs(path, exist_ok=True)
        manifest_path = os.path.join(path, MANIFEST)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)  # Incomplete until the new manifest lands.
        towers = info.get("towers")
        if not towers and any(np.ndim(arrays[name]) != 2 for name in ARRAYS):
            raise ValueError(f"{path}: arrays of per-item activations need info['towers'] (the cut, dtype and "
                             f"widths of the tops); got shapes {[np.shape(arrays[name]) for name in ARRAYS]}")
        dtype = towers["dtype"] if towers else np.float32
        for name in ARRAYS:
            save_array_atomic(os.path.join(path, f"{name}.npy"), np.asarray(arrays[name], dtype))
        for name in MASKS:
            if name in arrays:
                save_array_atomic(os.path.join(path, f"{name}.npy"), np.asarray(arrays[name], np.int8))
        save_array_atomic(os.path.join(path, "caption_offsets.npy"), dataset.caption_offsets())
        save_array_atomic(os.path.join(path, "labels.npy"), dataset.labels.astype(np.int32))
        manifest = dict(info)
        manifest.update({
            "format_version": FORMAT_VERSION,
            "dataset": dataset.name,
            "fingerprint": dataset.fingerprint(),
            "num_images": len(dataset),
            "num_captions": dataset.num_captions,
            "image_dim": int(towers["image_dim"] if towers else arrays["image"].shape[1]),
            "text_dim": int(towers["text_dim"] if towers else arrays["text"].shape[1]),
            "class_names": list(dataset.class_names),
            "filenames": list(dataset.filenames),
        })
        if towers:
            manifest["towers"] = {**towers, "image_shape": [int(d) for d in np.shape(arrays["image"])[1:]],
                                  "text_shape": [int(d) for d in np.shape(arrays["text"])[1:]]}
        write_json_atomic(manifest_path, manifest)
        return path

    @classmethod
    def open(cls, path: str, dataset: CaptionDataset | None = None, check_values: bool = True) -> "FeatureStore":
        """Opens a complete store; with `dataset`, refuses features of other data."""
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.isdir(path):
            raise FeatureStoreError(f"{path}: feature store does not exist (run train.extract_features first)")
        if not os.path.isfile(manifest_path):
            raise FeatureStoreError(f"{path}: no {MANIFEST}; the extraction did not finish (run it again to resume)")
        try:
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise FeatureStoreError(f"{manifest_path}: not valid JSON ({e})") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise FeatureStoreError(f"{manifest_path}: format_version {manifest.get('format_version')!r}, "
                                    f"expected {FORMAT_VERSION}")
        if dataset is not None:
            cls._check_dataset(manifest_path, manifest, dataset)
        n, m = manifest["num_images"], manifest["num_captions"]
        towers = manifest.get("towers")
        if towers:
            image_shape, text_shape = tuple(towers["image_shape"]), tuple(towers["text_shape"])
        else:
            image_shape, text_shape = (manifest["image_dim"],), (manifest["text_dim"],)
        expected = {"image": (n, *image_shape), "image_aug": (n, *image_shape),
                    "text": (m, *text_shape), "text_aug": (m, *text_shape),
                    "caption_offsets": (n + 1,), "labels": (n,)}
        if towers and towers.get("text_trainable_layers"):
            expected.update({name: (m, text_shape[0]) for name in MASKS})
        arrays = {}
        for name, shape in expected.items():
            file = os.path.join(path, f"{name}.npy")
            try:
                array = np.load(file, mmap_mode="r")
            except FileNotFoundError:
                raise FeatureStoreError(f"{file}: missing from the feature store") from None
            except ValueError as e:
                raise FeatureStoreError(f"{file}: not a readable .npy array ({e})") from None
            if array.shape != tuple(shape):
                raise FeatureStoreError(f"{file}: shape {array.shape}, expected {tuple(shape)} from {MANIFEST}")
            if towers and name in ARRAYS and array.dtype != np.dtype(towers["dtype"]):
                raise FeatureStoreError(f"{file}: dtype {array.dtype}, expected {towers['dtype']} from {MANIFEST}")
            bad = _first_non_finite_row(array) if check_values and array.dtype.kind == "f" else None
            if bad is not None:
                raise FeatureStoreError(f"{file}: contains NaN or infinity (first at row {bad})")
            arrays[name] = array
        if arrays["caption_offsets"][-1] != m:
            raise FeatureStoreError(f"{path}/caption_offsets.npy: ends at {arrays['caption_offsets'][-1]}, expected {m}")
        return cls(path=path, manifest=manifest, **arrays)

    @staticmethod
    def _check_dataset(manifest_path: str, manifest: dict, dataset: CaptionDataset) -> None:
        if manifest.get("num_images") != len(dataset) or manifest.get("num_captions") != dataset.num_captions:
            raise FeatureStoreError(
                f"{manifest_path}: made for {manifest.get('num_images')} images / "
                f"{manifest.get('num_captions')} captions, the dataset has {len(dataset)} / {dataset.num_captions}")
        if manifest.get("filenames") != list(dataset.filenames):
            first = next(i for i, (a, b) in enumerate(zip(manifest["filenames"], dataset.filenames)) if a != b)
            raise FeatureStoreError(
                f"{manifest_path}: item order differs from the dataset at item {first} "
                f"({manifest['filenames'][first]!r} vs {dataset.filenames[first]!r})")
        if manifest.get("fingerprint") != dataset.fingerprint():
            raise FeatureStoreError(
                f"{manifest_path}: made for other data (fingerprint {manifest.get('fingerprint')}, dataset "
                f"{dataset.fingerprint()}): captions or labels changed; extract the features again")

    def captions_of(self, image_index: int) -> slice:
        return slice(int(self.caption_offsets[image_index]), int(self.caption_offsets[image_index + 1]))
