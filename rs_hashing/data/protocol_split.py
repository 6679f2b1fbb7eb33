"""The papers' evaluation protocol: train / query / database split and caption choice,
and a validation split carved from the training images.

As in the authors' code (METHOD.md, `dataset/data_handlers.py` and `utils.select_idxs`
of comrados/duch): Python's `random` seeded with `split_seed` (42) draws
`floor(train_fraction * N)` training images; of the others it draws
`floor(query_fraction * rest)` queries; the rest is the retrieval database. The file's
own `split` field is ignored. One caption per image is then drawn separately for each
subset: the generator is reseeded with `caption_seed` (42) before the training, the
query and the database images, and draws `randrange(n)` (what the authors'
`random.sample(range(5), 1)` draws) for each image of the subset in index order.

A validation split (`val_fraction` > 0) is for choosing settings without looking at the
test queries: `random.Random(val_seed)` draws `floor(val_fraction * T)` of the T training
images, of which `floor(query_fraction * V)` become validation queries and the rest the
validation database; training uses the remaining training images. The protocol's query
and database images are not used at all by such a run, and every image keeps the caption
the protocol drew for it.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np

from rs_hashing.data.caption_dataset import CaptionDataset

PARTS = ("test", "validation")


def _draw(rng: random.Random, population: list[int], fraction: float) -> tuple[list[int], list[int]]:
    """(sorted sample of floor(fraction * len), sorted rest), as the authors' split_indexes."""
    chosen = sorted(rng.sample(population, math.floor(fraction * len(population))))
    taken = set(chosen)
    return chosen, [i for i in population if i not in taken]


def subset_captions(images: list[int] | np.ndarray, captions_per_image, seed: int) -> dict[int, int]:
    """Caption of each image of one subset: the generator reseeded with `seed`, one
    `randrange(n_i)` per image in the given (sorted) order."""
    rng = random.Random(seed)
    return {int(i): rng.randrange(int(captions_per_image[int(i)])) for i in images}


@dataclasses.dataclass(frozen=True)
class ProtocolSplit:
    """Sorted image indices of each part and the caption picked for every image.

    Attributes:
      train, query, database: int64 image indices, sorted, disjoint (for a validation
        split: the training images left for training, the validation queries and the
        validation database; together the protocol's training images).
      caption_choice: [N] index of the chosen caption within each image's captions.
      evaluated_on: "test" (the protocol's queries and database) or "validation".
    """

    train: np.ndarray
    query: np.ndarray
    database: np.ndarray
    caption_choice: np.ndarray
    evaluated_on: str = "test"

    @classmethod
    def make(cls, num_images: int, captions_per_image: np.ndarray | list[int], split_seed: int = 42,
             caption_seed: int = 42, train_fraction: float = 0.5,
             query_fraction: float = 0.2) -> "ProtocolSplit":
        if num_images < 3:
            raise ValueError(f"num_images={num_images} is too small to split")
        if len(captions_per_image) != num_images:
            raise ValueError(f"{len(captions_per_image)} caption counts for {num_images} images")
        rng = random.Random(split_seed)  # Same stream as the authors' random.seed(42).
        train, rest = _draw(rng, list(range(num_images)), train_fraction)
        query, database = _draw(rng, rest, query_fraction)
        choice = np.zeros(num_images, np.int64)
        for subset in (train, query, database):  # Reseeded per subset, as the authors.
            for image, caption in subset_captions(subset, captions_per_image, caption_seed).items():
                choice[image] = caption
        as_array = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
        return cls(as_array(train), as_array(query), as_array(database), choice)

    def validation(self, val_fraction: float, val_seed: int, query_fraction: float = 0.2) -> "ProtocolSplit":
        """The validation split carved from this split's training images (module docstring)."""
        if self.evaluated_on != "test":
            raise ValueError("a validation split is carved from the protocol's split, not from another one")
        rng = random.Random(val_seed)
        held_out, train = _draw(rng, [int(i) for i in self.train], val_fraction)
        query, database = _draw(rng, held_out, query_fraction)
        if not query or not database or not train:
            raise ValueError(f"val_fraction={val_fraction} of {len(self.train)} training images leaves "
                             f"{len(train)} for training, {len(query)} validation queries and {len(database)} "
                             "validation database images; each needs at least one")
        as_array = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
        return dataclasses.replace(self, train=as_array(train), query=as_array(query),
                                   database=as_array(database), evaluated_on="validation")

    @classmethod
    def for_dataset(cls, dataset: CaptionDataset, data_config) -> "ProtocolSplit":
        """The config's split: the protocol's, or its validation split when
        `data_config.val_fraction` > 0."""
        split = cls.make(len(dataset), [len(c) for c in dataset.captions], data_config.split_seed,
                         data_config.caption_seed, data_config.train_fraction, data_config.query_fraction)
        if getattr(data_config, "val_fraction", 0.0) > 0:
            split = split.validation(data_config.val_fraction, data_config.val_seed, data_config.query_fraction)
        return split

    def chosen_caption_index(self, offsets: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Flat caption index (see `CaptionDataset.caption_offsets`) of each image's pick."""
        return offsets[images] + self.caption_choice[images]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "query": len(self.query), "database": len(self.database)}
