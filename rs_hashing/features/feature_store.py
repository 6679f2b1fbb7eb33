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

`manifest.json` is written last, so a store without one is incomplete. `FeatureStore.open`
refuses a store made for other data (fingerprint, item count, item order), arrays of the
wrong shape, and arrays that contain NaN or infinity, each with a message naming the
file.
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
    """

    path: str
    manifest: dict
    image: np.ndarray
    image_aug: np.ndarray
    text: np.ndarray
    text_aug: np.ndarray
    caption_offsets: np.ndarray
    labels: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.image)

    @property
    def image_dim(self) -> int:
        return self.image.shape[1]

    @property
    def text_dim(self) -> int:
        return self.text.shape[1]

    @staticmethod
    def write(path: str, arrays: dict[str, np.ndarray], dataset: CaptionDataset, info: dict) -> str:
        """Writes the final arrays and then the manifest (which marks the store complete)."""
        os.makedirs(path, exist_ok=True)
        manifest_path = os.path.join(path, MANIFEST)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)  # Incomplete until the new manifest lands.
        for name in ARRAYS:
            save_array_atomic(os.path.join(path, f"{name}.npy"), np.asarray(arrays[name], np.float32))
        save_array_atomic(os.path.join(path, "caption_offsets.npy"), dataset.caption_offsets())
        save_array_atomic(os.path.join(path, "labels.npy"), dataset.labels.astype(np.int32))
        manifest = dict(info)
        manifest.update({
            "format_version": FORMAT_VERSION,
            "dataset": dataset.name,
            "fingerprint": dataset.fingerprint(),
            "num_images": len(dataset),
            "num_captions": dataset.num_captions,
            "image_dim": int(arrays["image"].shape[1]),
            "text_dim": int(arrays["text"].shape[1]),
            "class_names": list(dataset.class_names),
            "filenames": list(dataset.filenames),
        })
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
        expected = {"image": (n, manifest["image_dim"]), "image_aug": (n, manifest["image_dim"]),
                    "text": (m, manifest["text_dim"]), "text_aug": (m, manifest["text_dim"]),
                    "caption_offsets": (n + 1,), "labels": (n,)}
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
            if check_values and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                bad = int(np.flatnonzero(~np.all(np.isfinite(array), axis=tuple(range(1, array.ndim))))[0])
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
