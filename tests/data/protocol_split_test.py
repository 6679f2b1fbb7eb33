import random

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


def _authors_split_indexes(idx_all, split):
    # dataset/data_handlers.py of comrados/duch, verbatim but for names.
    selection = sorted(random.sample(idx_all, int(len(idx_all) * split)))
    return selection, sorted(set(idx_all).difference(set(selection)))


def _authors_select_idxs(seq_length, n_to_select, n_from_select, seed=42):
    # utils.select_idxs of comrados/duch, verbatim but for names.
    random.seed(seed)
    idxs = [[] for _ in range(n_to_select)]
    for i in range(seq_length // n_from_select):
        ints = random.sample(range(n_from_select), n_to_select)
        for j in range(n_to_select):
            idxs[j].append(i * n_from_select + ints[j])
    return idxs


def test_caption_draw_reproduces_the_authors_per_subset_choice_by_hand():
    # Worked out with Python's random as the authors call it: random.seed(42), the
    # 50% / 20% split of 12 images, then per subset random.seed(42) and one
    # random.sample(range(5), 1) per image.
    split = ProtocolSplit.make(12, [5] * 12)
    assert split.train.tolist() == [0, 1, 3, 4, 10, 11]
    assert split.query.tolist() == [5]
    assert split.database.tolist() == [2, 6, 7, 8, 9]
    assert split.caption_choice[split.train].tolist() == [0, 0, 2, 1, 1, 1]
    assert split.caption_choice[split.query].tolist() == [0]
    assert split.caption_choice[split.database].tolist() == [0, 0, 2, 1, 1]


@pytest.mark.parametrize("num_images,seed", [(100, 42), (331, 7), (2100, 42)])
def test_split_and_captions_equal_the_authors_code(num_images, seed):
    random.seed(seed)
    train, rest = _authors_split_indexes(list(range(num_images)), 0.5)
    query, database = _authors_split_indexes(rest, 0.2)
    split = ProtocolSplit.make(num_images, [5] * num_images, split_seed=seed, caption_seed=seed)
    for ours, theirs in ((split.train, train), (split.query, query), (split.database, database)):
        assert ours.tolist() == theirs
        picked = _authors_select_idxs(len(theirs) * 5, 1, 5, seed=seed)[0]  # flat caption ids of the subset
        assert (split.caption_choice[ours]).tolist() == [p % 5 for p in picked]


def test_validation_split_is_carved_from_training_images_only():
    split = ProtocolSplit.make(1000, [5] * 1000)
    val = split.validation(0.2, val_seed=3)
    assert val.evaluated_on == "validation"
    assert val.sizes() == {"train": 400, "query": 20, "database": 80}
    carved = np.concatenate([val.train, val.query, val.database])
    assert sorted(carved.tolist()) == split.train.tolist()
    np.testing.assert_array_equal(val.caption_choice, split.caption_choice)
    again = split.validation(0.2, val_seed=3)
    np.testing.assert_array_equal(val.query, again.query)
    assert split.validation(0.2, val_seed=4).query.tolist() != val.query.tolist()
    with pytest.raises(ValueError, match="validation split is carved from the protocol's split"):
        val.validation(0.2, val_seed=3)
    with pytest.raises(ValueError, match="each needs at least one"):
        split.validation(0.001, val_seed=3)
