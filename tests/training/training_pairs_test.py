import numpy as np
import pytest

from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.training.training_pairs import TrainingPairs


class FakeStore:
    """Features whose values encode their own row: image i -> [i], caption c -> [c]."""

    def __init__(self, captions_per_image):
        counts = np.asarray(captions_per_image)
        self.caption_offsets = np.concatenate([[0], np.cumsum(counts)])
        n, m = len(counts), int(counts.sum())
        self.image = np.arange(n, dtype=np.float32)[:, None]
        self.image_aug = self.image + 0.5
        self.text = np.arange(m, dtype=np.float32)[:, None]
        self.text_aug = self.text + 0.5
        self.labels = np.arange(n) % 2


def _split(n, choice):
    return ProtocolSplit(train=np.arange(0, n, 2), query=np.arange(1, n, 4), database=np.arange(3, n, 4),
                         caption_choice=np.asarray(choice))


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
    with pytest.raises(ValueError, match="batch_size=8 is larger than the 4 training pairs"):
        pairs.steps_per_epoch("one", 8)
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
