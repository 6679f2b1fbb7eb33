"""Training pairs drawn from a feature store, as dict batches for `model.fit`.

Each training item is an image (original and augmented features) paired with a caption
from its caption pool: its own captions, or, for a pair corrupted by the noise injector,
the captions of the image whose caption replaced its own. Three caption modes:

* `one`: the caption the protocol picked for the image (the papers' setting);
* `random`: a caption drawn from the pool anew for every epoch;
* `all_pairs`: every caption of the pool is its own training pair (5x longer epochs).

An epoch is every pair once, in an order that depends only on (seed, epoch), so a
resumed run sees exactly the batches an uninterrupted one would have seen. Its last
batch is the remainder when the pairs do not fill whole batches (the authors' loaders,
drop_last=False), except a remainder of one pair, which is dropped: BatchNorm cannot
normalise a batch of one sample.

Items carry their global training-item id (`item_ids`, the position in `split.train`),
which batches give as `index`: a subset of the training set (CHNR's trusted pairs)
addresses the same rows of the model's binary-target table as the whole set.

A store of cached activations (trainable encoder tops) gives batches of activations in
the store's dtype (float16 by default; the model casts them), and token states come
with their padding masks (`text_mask`, `text_aug_mask`), cut to the batch's longest
caption (the top masks padding, so the cut changes no value and saves a third of the
text top's work on RSICD, whose captions are 14 tokens long on average, 42 at most).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import tensorflow as tf

from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.features.feature_store import FeatureStore


def _as_batch_dtype(array: np.ndarray) -> np.ndarray:
    """Rows of a store array in memory: float16 activations stay float16 (half the
    memory; the model casts them), features become float32."""
    return np.asarray(array, np.float16 if array.dtype == np.float16 else np.float32)


@dataclasses.dataclass
class TrainingPairs:
    """Arrays of the training set, or of a subset of it.

    Attributes:
      image, image_aug: [T, Di] features of the T training images.
      item_ids: [T] global training-item id of each item (its position in `split.train`),
        the `index` its batches carry.
      text_pool, text_aug_pool: [P, Dt] features of every caption a pair may use.
      pool_offsets: [T + 1] item t draws captions pool_offsets[t]:pool_offsets[t+1].
      chosen: [T] pool index of the caption used in `one` mode.
      labels: [T] scene classes of the images.
      noisy: [T] bool, pairs whose captions were replaced.
      pair_weights: [P] weight of each (item, caption) pair, 1 unless a noise detector
        set it; multiplies the pair's inter-modal contrastive term.
      text_mask_pool, text_aug_mask_pool: [P, T] padding masks of cached token states
        (a trainable text top), else None.
    """

    image: np.ndarray
    image_aug: np.ndarray
    item_ids: np.ndarray
    text_pool: np.ndarray
    text_aug_pool: np.ndarray
    pool_offsets: np.ndarray
    chosen: np.ndarray
    labels: np.ndarray
    noisy: np.ndarray
    pair_weights: np.ndarray
    text_mask_pool: np.ndarray | None = None
    text_aug_mask_pool: np.ndarray | None = None

    @classmethod
    def from_store(cls, store: FeatureStore, split: ProtocolSplit, noise: NoisyPairs | None = None,
                   items: np.ndarray | None = None) -> "TrainingPairs":
        """Training pairs of `split.train`, or of the training items `items` (global ids,
        positions in `split.train`), which keep their ids."""
        train = split.train
        source = noise.caption_source if noise is not None else np.arange(len(train))
        noisy = noise.noisy if noise is not None else np.zeros(len(train), bool)
        positions = np.arange(len(train)) if items is None else np.asarray(items)
        images = train[positions]
        caption_images = train[source[positions]]
        offsets = store.caption_offsets
        starts, stops = offsets[caption_images], offsets[caption_images + 1]
        counts = stops - starts
        pool = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])
        pool_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        chosen = pool_offsets[:-1] + split.caption_choice[caption_images]
        masks = getattr(store, "text_mask", None) is not None
        return cls(
            image=_as_batch_dtype(store.image[images]),
            image_aug=_as_batch_dtype(store.image_aug[images]),
            item_ids=positions.astype(np.int64),
            text_pool=_as_batch_dtype(store.text[pool]),
            text_aug_pool=_as_batch_dtype(store.text_aug[pool]),
            pool_offsets=pool_offsets,
            chosen=chosen.astype(np.int64),
            labels=np.asarray(store.labels[images]),
            noisy=noisy[positions],
            pair_weights=np.ones(len(pool), np.float32),
            text_mask_pool=np.asarray(store.text_mask[pool]) if masks else None,
            text_aug_mask_pool=np.asarray(store.text_aug_mask[pool]) if masks else None,
        )

    def __len__(self) -> int:
        return len(self.image)

    def pairs_for_epoch(self, mode: str, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(item position, pool index) of every pair of an epoch, in training order; item
        positions are rows of these arrays (`item_ids` maps them to global ids)."""
        rng = np.random.default_rng([seed, epoch])
        count = len(self)
        if mode == "one":
            items, captions = np.arange(count), self.chosen
        elif mode == "random":
            sizes = np.diff(self.pool_offsets)
            items = np.arange(count)
            captions = self.pool_offsets[:-1] + (rng.random(count) * sizes).astype(np.int64)
        elif mode == "all_pairs":
            captions = np.arange(len(self.text_pool))
            items = np.repeat(np.arange(count), np.diff(self.pool_offsets))
        else:
            raise ValueError(f"caption_mode={mode!r} is not one of one, random, all_pairs")
        order = rng.permutation(len(items))
        return items[order], captions[order]

    def num_pairs(self, mode: str) -> int:
        """Pairs of an epoch: one per item, or one per caption in `all_pairs` mode."""
        return len(self.text_pool) if mode == "all_pairs" else len(self)

    def steps_per_epoch(self, mode: str, batch_size: int) -> int:
        """Batches of an epoch: ceil(pairs / batch_size), less a last batch of one pair
        (dropped: BatchNorm cannot normalise one sample)."""
        pairs = self.num_pairs(mode)
        if pairs < 2:
            raise ValueError(f"{pairs} training pair(s): training needs at least 2 (a batch of one cannot be "
                             "normalised)")
        full, remainder = divmod(pairs, batch_size)
        return full + int(remainder >= 2)

    def batch(self, items: np.ndarray, captions: np.ndarray) -> dict[str, np.ndarray]:
        """The pairs (item positions `items`, pool indices `captions`) as a named batch;
        `index` is the items' global ids."""
        batch = {
            "image": self.image[items],
            "image_aug": self.image_aug[items],
            "index": self.item_ids[items].astype(np.int32),
            "pair_weights": self.pair_weights[captions],
        }
        if self.text_mask_pool is None:
            batch["text"], batch["text_aug"] = self.text_pool[captions], self.text_aug_pool[captions]
            return batch
        # Token states are cut to the batch's longest caption of each view: the top
        # masks padding, so the dropped columns (padding in every caption of the batch)
        # change nothing but the step's cost.
        for view, states, masks in (("text", self.text_pool, self.text_mask_pool),
                                    ("text_aug", self.text_aug_pool, self.text_aug_mask_pool)):
            mask = masks[captions]
            real = np.flatnonzero(mask.any(axis=0))
            longest = int(real[-1]) + 1 if len(real) else 1
            batch[view], batch[f"{view}_mask"] = states[captions, :longest], mask[:, :longest]
        return batch

    def epoch_chunks(self, mode: str, batch_size: int, seed: int, first_epoch: int,
                     epochs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(item positions, pool indices) of every batch of epochs [first_epoch, epochs):
        `steps_per_epoch` batches an epoch, the last one the remainder."""
        steps = self.steps_per_epoch(mode, batch_size)
        for epoch in range(first_epoch, epochs):
            items, captions = self.pairs_for_epoch(mode, seed, epoch)
            for step in range(steps):
                chunk = slice(step * batch_size, (step + 1) * batch_size)
                yield items[chunk], captions[chunk]

    def batches(self, mode: str, batch_size: int, seed: int, first_epoch: int,
                epochs: int) -> Iterator[dict[str, np.ndarray]]:
        for items, captions in self.epoch_chunks(mode, batch_size, seed, first_epoch, epochs):
            yield self.batch(items, captions)

    def dataset(self, mode: str, batch_size: int, seed: int, first_epoch: int, epochs: int) -> tf.data.Dataset:
        """Batches for `model.fit(..., initial_epoch=first_epoch, epochs=epochs)`, of
        `batch_size` pairs but the last of each epoch (batch dimension None)."""
        first = self.batch(np.arange(1), self.chosen[:1])
        tokens = self.text_mask_pool is not None

        def spec(name: str, value: np.ndarray) -> tf.TensorSpec:
            shape = [None, *value.shape[1:]]
            if tokens and name.startswith("text"):
                shape[1] = None  # token columns: each batch's longest caption (`batch`)
            return tf.TensorSpec(shape, tf.as_dtype(value.dtype))

        signature = {name: spec(name, value) for name, value in first.items()}
        return tf.data.Dataset.from_generator(
            lambda: self.batches(mode, batch_size, seed, first_epoch, epochs),
            output_signature=signature).prefetch(2)

    def all_views(self) -> dict[str, np.ndarray]:
        """Every item once with its `one`-mode caption (binary-target updates, scoring);
        `index` holds the items' global ids."""
        return self.batch(np.arange(len(self)), self.chosen)
