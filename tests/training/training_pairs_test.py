"""Tests for rs_hashing.training.training_pairs: pairs, caption modes, epochs and batches."""

import numpy as np
import pytest

from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.training.training_pairs import TrainingPairs
from tests.training.tiny_store import FakeStore, fake_split as _split


def test_one_mode_pairs_each_image_with_its_chosen_caption():
    store = FakeStore([2, 3, 2, 1, 2, 2])
    split = _split(6, [1, 0, 0, 0, 1, 0])
    pairs = TrainingPairs.from_store(store, split)
    # train images 0, 2, 4 own captions 0-1, 5-6, 8-9; chosen 1, 0, 1 -> flat 1, 5, 9.
    batch = pairs.all_views()
    assert batch["image"][:, 0].tolist() == [0, 2, 4]
    assert batch["text"][:, 0].tolist() == [1, 5, 9]
    assert batch["text_aug"][:, 0].tolist() == [1.5, 5.5, 9.5]
    assert batch["index"].tolist() == [0, 1, 2]


def test_noisy_pairs_take_the_caption_pool_of_their_source():
    store = FakeStore([2] * 6)
    split = _split(6, [0] * 6)
    noise = NoisyPairs(caption_source=np.array([0, 2, 2]), noisy=np.array([False, True, False]),
                       protected=np.zeros(3, bool), noise_rate=0.3)
    pairs = TrainingPairs.from_store(store, split, noise)
    # Item 1 (image 2) now carries image 4's captions (flat 8, 9).
    assert pairs.text_pool[pairs.pool_offsets[1]:pairs.pool_offsets[2], 0].tolist() == [8, 9]
    assert pairs.noisy.tolist() == [False, True, False]


def test_epoch_order_depends_only_on_seed_and_epoch():
    store = FakeStore([5] * 40)
    pairs = TrainingPairs.from_store(store, _split(40, [0] * 40))
    a = pairs.pairs_for_epoch("random", seed=3, epoch=7)
    b = pairs.pairs_for_epoch("random", seed=3, epoch=7)
    c = pairs.pairs_for_epoch("random", seed=3, epoch=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].tolist() != c[0].tolist()
    # Resuming at epoch 1 yields exactly the batches an uninterrupted run sees from epoch 1.
    full = list(pairs.batches("one", 4, seed=0, first_epoch=0, epochs=3))
    resumed = list(pairs.batches("one", 4, seed=0, first_epoch=1, epochs=3))
    assert len(full) == 15 and len(resumed) == 10
    for x, y in zip(full[5:], resumed):
        np.testing.assert_array_equal(x["index"], y["index"])


def test_caption_modes():
    store = FakeStore([5] * 8)
    pairs = TrainingPairs.from_store(store, _split(8, [0] * 8))
    items, captions = pairs.pairs_for_epoch("random", 0, 0)
    owner = np.searchsorted(pairs.pool_offsets, captions, side="right") - 1
    np.testing.assert_array_equal(owner, items)  # every caption is from its item's pool
    items, captions = pairs.pairs_for_epoch("all_pairs", 0, 0)
    assert sorted(captions.tolist()) == list(range(20)) and len(items) == 20
    assert pairs.steps_per_epoch("all_pairs", 4) == 5 and pairs.steps_per_epoch("one", 4) == 1
    # Fewer pairs than a batch: one partial batch an epoch.
    assert pairs.steps_per_epoch("one", 8) == 1 and pairs.steps_per_epoch("all_pairs", 32) == 1
    with pytest.raises(ValueError, match="caption_mode='many'"):
        pairs.pairs_for_epoch("many", 0, 0)


def test_tf_dataset_yields_named_batches():
    store = FakeStore([2] * 16)
    pairs = TrainingPairs.from_store(store, _split(16, [0] * 16))
    pairs.pair_weights[:] = 0.25
    batches = list(pairs.dataset("one", 4, seed=0, first_epoch=0, epochs=2))
    assert len(batches) == 4
    assert set(batches[0]) == {"image", "image_aug", "text", "text_aug", "index", "pair_weights"}
    assert batches[0]["image"].shape == (4, 1) and np.all(batches[0]["pair_weights"].numpy() == 0.25)


def _epoch_batches(pairs, batch_size, epochs=2, mode="one"):
    """The numpy batches of `epochs` epochs, grouped by epoch."""
    steps = pairs.steps_per_epoch(mode, batch_size)
    batches = list(pairs.batches(mode, batch_size, seed=0, first_epoch=0, epochs=epochs))
    assert len(batches) == steps * epochs
    return [batches[e * steps:(e + 1) * steps] for e in range(epochs)]


def test_an_epoch_keeps_its_last_partial_batch():
    # DUCH on RSICD: 5000 training pairs at batch 256 are 19 full batches and one of 136.
    store = FakeStore([1] * 10000)
    pairs = TrainingPairs.from_store(store, _split(10000, [0] * 10000))
    assert len(pairs) == 5000 and pairs.steps_per_epoch("one", 256) == 20
    for epoch in _epoch_batches(pairs, 256):
        assert [len(batch["index"]) for batch in epoch] == [256] * 19 + [136]
        np.testing.assert_array_equal(np.sort(np.concatenate([b["index"] for b in epoch])), np.arange(5000))


def test_a_last_batch_of_one_pair_is_dropped():
    store = FakeStore([2] * 18)  # 9 training items, 18 captions
    pairs = TrainingPairs.from_store(store, _split(18, [0] * 18))
    assert pairs.steps_per_epoch("one", 4) == 2  # 4 + 4 (+ 1 dropped)
    assert pairs.steps_per_epoch("one", 8) == 1  # 8 (+ 1 dropped)
    assert pairs.steps_per_epoch("one", 3) == 3 and pairs.steps_per_epoch("all_pairs", 4) == 5  # 4*4 + 2
    for epoch in _epoch_batches(pairs, 4):
        assert [len(batch["index"]) for batch in epoch] == [4, 4]
        assert len(set(np.concatenate([b["index"] for b in epoch]))) == 8
    one_item = TrainingPairs.from_store(FakeStore([2] * 2), _split(2, [0, 0]))
    with pytest.raises(ValueError, match="1 training pair.*at least 2"):
        one_item.steps_per_epoch("one", 4)
    assert one_item.steps_per_epoch("all_pairs", 4) == 1  # its two captions are two pairs


def test_a_subset_keeps_the_global_ids_of_its_items():
    store = FakeStore([2] * 12)  # training items 0..5 are images 0, 2, ..., 10
    items = np.array([1, 4, 5])
    pairs = TrainingPairs.from_store(store, _split(12, [1] * 12), items=items)
    np.testing.assert_array_equal(pairs.item_ids, items)
    views = pairs.all_views()
    assert views["index"].tolist() == [1, 4, 5] and views["image"][:, 0].tolist() == [2, 8, 10]
    assert views["text"][:, 0].tolist() == [5, 17, 21]  # caption 1 of images 2, 8, 10
    for batch in pairs.batches("all_pairs", 2, seed=0, first_epoch=0, epochs=1):
        np.testing.assert_array_equal(batch["image"][:, 0], 2 * batch["index"])  # id t is image 2t
    whole = TrainingPairs.from_store(store, _split(12, [1] * 12))
    np.testing.assert_array_equal(whole.item_ids, np.arange(6))


def test_tf_dataset_batches_have_an_open_batch_dimension():
    store = FakeStore([1] * 20)
    pairs = TrainingPairs.from_store(store, _split(20, [0] * 20))
    data = pairs.dataset("one", 4, seed=0, first_epoch=0, epochs=2)
    assert all(spec.shape[0] is None for spec in data.element_spec.values())
    assert [int(batch["index"].shape[0]) for batch in data] == [4, 4, 2] * 2


def _token_pairs(lengths, aug_lengths, columns=6, hidden=3):
    """Training pairs of one caption per item whose token states are cached: caption p
    has lengths[p] real tokens (state values p + column / 10) then padding."""
    count = len(lengths)

    def states(lengths):
        values = np.arange(count)[:, None] + np.arange(columns)[None] / 10
        mask = (np.arange(columns)[None] < np.asarray(lengths)[:, None]).astype(np.int8)
        return np.repeat(values[:, :, None], hidden, axis=2).astype(np.float16), mask

    (text, mask), (text_aug, aug_mask) = states(lengths), states(aug_lengths)
    return TrainingPairs(
        image=np.zeros((count, 2), np.float32), image_aug=np.zeros((count, 2), np.float32),
        item_ids=np.arange(count), text_pool=text, text_aug_pool=text_aug,
        pool_offsets=np.arange(count + 1), chosen=np.arange(count), labels=np.zeros(count, int),
        noisy=np.zeros(count, bool), pair_weights=np.ones(count, np.float32),
        text_mask_pool=mask, text_aug_mask_pool=aug_mask)


def test_token_states_are_cut_to_the_longest_caption_of_the_batch():
    pairs = _token_pairs(lengths=[2, 5, 3, 1], aug_lengths=[1, 2, 4, 6])
    batch = pairs.batch(np.array([0, 2]), np.array([0, 2]))
    # Captions 0 and 2 have 2 and 3 tokens: 3 columns; their augmented views 1 and 4.
    assert batch["text"].shape == (2, 3, 3) and batch["text_aug"].shape == (2, 4, 3)
    np.testing.assert_array_equal(batch["text_mask"], [[1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(batch["text_aug_mask"], [[1, 0, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(batch["text"][1, :, 0], [2.0, 2.1, 2.2], rtol=1e-3)
    assert pairs.batch(np.array([3]), np.array([3]))["text"].shape == (1, 1, 3)
    # The whole set: the longest of all.
    assert pairs.all_views()["text_aug"].shape == (4, 6, 3)
    data = pairs.dataset("one", 2, seed=0, first_epoch=0, epochs=1)
    assert data.element_spec["text"].shape.as_list() == [None, None, 3]
    assert data.element_spec["text_mask"].shape.as_list() == [None, None]
    lengths = {tuple(sorted(b["index"].numpy())): b["text"].shape[1] for b in data}
    assert lengths == {ids: max(np.array([2, 5, 3, 1])[list(ids)]) for ids in lengths}
