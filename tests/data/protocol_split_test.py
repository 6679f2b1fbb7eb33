import numpy as np
import pytest

from rs_hashing.data.protocol_split import ProtocolSplit


def test_ucm_indices_match_the_authors_split():
    # Known from the authors' code on UCM (2,100 images, seed 42).
    split = ProtocolSplit.make(2100, [5] * 2100)
    assert split.train[:8].tolist() == [0, 1, 3, 4, 5, 6, 7, 11]
    assert split.query[:8].tolist() == [9, 15, 34, 38, 57, 62, 86, 97]
    assert split.sizes() == {"train": 1050, "query": 210, "database": 840}


def test_rsicd_sizes_and_partition():
    split = ProtocolSplit.make(10921, [5] * 10921)
    assert split.sizes() == {"train": 5460, "query": 1092, "database": 4369}
    every = np.concatenate([split.train, split.query, split.database])
    assert sorted(every.tolist()) == list(range(10921))
    for part in (split.train, split.query, split.database):
        assert np.all(np.diff(part) > 0)


def test_seed_changes_the_split_and_is_deterministic():
    a = ProtocolSplit.make(100, [5] * 100, split_seed=1)
    b = ProtocolSplit.make(100, [5] * 100, split_seed=1)
    c = ProtocolSplit.make(100, [5] * 100, split_seed=2)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.caption_choice, b.caption_choice)
    assert a.train.tolist() != c.train.tolist()


def test_caption_choice_respects_each_images_caption_count():
    counts = [1, 2, 5, 3] * 25
    split = ProtocolSplit.make(100, counts)
    assert np.all(split.caption_choice < np.array(counts)) and np.all(split.caption_choice >= 0)
    assert np.all(split.caption_choice[::4] == 0)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = split.chosen_caption_index(offsets, np.array([0, 1, 2]))
    assert flat.tolist() == [0, 1 + split.caption_choice[1], 3 + split.caption_choice[2]]


def test_too_small():
    with pytest.raises(ValueError, match="num_images=2"):
        ProtocolSplit.make(2, [1, 1])
