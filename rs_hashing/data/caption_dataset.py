"""An image-caption archive held in memory: file names, captions and scene classes."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class CaptionDataset:
    """Images with their captions and scene classes, in file order.

    Attributes:
      name: dataset name (for messages and manifests).
      image_dir: folder the file names are relative to.
      filenames: one relative file name per image.
      captions: the captions of each image (one or more, never empty strings).
      labels: int scene class per image, indices into `class_names`.
      class_names: sorted class names.
      source: the caption file the dataset was read from.
    """

    name: str
    image_dir: str
    filenames: tuple[str, ...]
    captions: tuple[tuple[str, ...], ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.filenames)
        if len(self.captions) != n or len(self.labels) != n:
            raise ValueError(
                f"{self.name}: {n} file names but {len(self.captions)} caption lists and "
                f"{len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.filenames)

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image_path(self, index: int) -> str:
        return os.path.join(self.image_dir, self.filenames[index])

    def flat_captions(self) -> tuple[list[str], np.ndarray]:
        """All captions in order and, for each, the index of its image."""
        texts = [c for caps in self.captions for c in caps]
        owner = np.repeat(np.arange(len(self)), [len(c) for c in self.captions])
        return texts, owner

    def caption_offsets(self) -> np.ndarray:
        """[N + 1] offsets: image i owns flat captions offsets[i]:offsets[i+1]."""
        return np.concatenate([[0], np.cumsum([len(c) for c in self.captions])]).astype(np.int64)

    def fingerprint(self) -> str:
        """A hash of file names, captions and labels: a feature store records it so that
        features made for other data (or another item order) are refused."""
        digest = hashlib.sha256()
        for filename, caps, label in zip(self.filenames, self.captions, self.labels):
            digest.update(filename.encode())
            digest.update(b"\0")
            for caption in caps:
                digest.update(caption.encode())
                digest.update(b"\1")
            digest.update(self.class_names[int(label)].encode())
            digest.update(b"\2")
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        return (f"{self.name}: {len(self)} images, {self.num_captions} captions, "
                f"{self.num_classes} classes")
