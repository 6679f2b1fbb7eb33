"""The papers' evaluation protocol: train / query / database split and caption choice.

As in the authors' code (METHOD.md): Python's `random` seeded with `split_seed` (42)
draws `floor(train_fraction * N)` training images; of the others it draws
`floor(query_fraction * rest)` queries; the rest is the retrieval database. The file's
own `split` field is ignored. One caption per image is drawn by a second generator
seeded with `caption_seed` (42), in file order over all images.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np

from rs_hashing.data.caption_dataset import CaptionDataset


@dataclasses.dataclass(frozen=True)
class ProtocolSplit:
    """Sorted image indices of each part and the caption picked for every image.

    Attributes:
      train, query, database: int64 image indices, sorted, disjoint, covering all images.
      caption_choice: [N] index of the chosen caption within each image's captions.
    """

    train: np.ndarray
    query: np.ndarray
    database: np.ndarray
    caption_choice: np.ndarray

    @classmethod
    def make(cls, num_images: int, captions_per_image: np.ndarray | list[int], split_seed: int = 42,
             caption_seed: int = 42, train_fraction: float = 0.5,
             query_fraction: float = 0.2) -> "ProtocolSplit":
        if num_images < 3:
            raise ValueError(f"num_images={num_images} is too small to split")
        rng = random.Random(split_seed)  # Same stream as the authors' random.seed(42).
        train = sorted(rng.sample(range(num_images), math.floor(train_fraction * num_images)))
        in_train = set(train)
        rest = [i for i in range(num_images) if i not in in_train]
        query = sorted(rng.sample(rest, math.floor(query_fraction * len(rest))))
        in_query = set(query)
        database = [i for i in rest if i not in in_query]
        caption_rng = random.Random(caption_seed)
        choice = [caption_rng.randrange(int(n)) for n in captions_per_image]
        as_array = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
        return cls(as_array(train), as_array(query), as_array(database), as_array(choice))

    @classmethod
    def for_dataset(cls, dataset: CaptionDataset, data_config) -> "ProtocolSplit":
        return cls.make(len(dataset), [len(c) for c in dataset.captions], data_config.split_seed,
                        data_config.caption_seed, data_config.train_fraction, data_config.query_fraction)

    def chosen_caption_index(self, offsets: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Flat caption index (see `CaptionDataset.caption_offsets`) of each image's pick."""
        return offsets[images] + self.caption_choice[images]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "query": len(self.query), "database": len(self.database)}
