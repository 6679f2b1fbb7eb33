import struct

import numpy as np
import pytest

from rs_hashing import metrics
from rs_hashing.index import hamming_index
from rs_hashing.index.hamming_index import HammingIndex, pack_codes


def _random_codes(rng, n, bits):
    return np.where(rng.random((n, bits)) < 0.5, -1, 1).astype(np.int8)


def _reference(queries, database, ids, k):
    """Brute force: every distance, then sorted by (distance, id)."""
    distances = metrics.hamming_distance(queries, database)
    order = np.lexsort((np.broadcast_to(ids, distances.shape), distances), axis=-1)[:, :k]
    return np.asarray(ids)[order], np.take_along_axis(distances, order, axis=1)


def test_pack_codes_is_numpy_packbits_msb_first():
    codes = np.array([[1, -1, -1, -1, -1, -1, -1, 1], [-1, -1, -1, -1, -1, -1, 1, -1]], np.int8)
    np.testing.assert_array_equal(pack_codes(codes, 8), [[0b10000001], [0b00000010]])
    np.testing.assert_array_equal(pack_codes(codes > 0, 8), [[129], [2]])  # {0, 1} form too
    packed = np.array([[7, 9]], np.uint8)
    assert pack_codes(packed, 16) is not None and pack_codes(packed, 16).tolist() == [[7, 9]]
    with pytest.raises(ValueError, match=r"expected 16-bit codes"):
        pack_codes(codes, 16)
    with pytest.raises(ValueError, match="only"):
        pack_codes(np.array([[0, 1, -1, 1, 1, 1, 1, 1]]), 8)


def test_hand_computed_ties_are_broken_by_id():
    # Distances to the query 0000 0000: ids 0..3 -> 2, 1, 1, 0 bits.
    codes = np.array([[1, 1, -1, -1, -1, -1, -1, -1],
                      [-1, -1, -1, -1, -1, -1, -1, 1],
                      [1, -1, -1, -1, -1, -1, -1, -1],
                      [-1] * 8], np.int8)
    index = HammingIndex(8)
    index.add(codes)
    ids, distances = index.search(np.full((1, 8), -1, np.int8), k=3)
    assert ids.tolist() == [[3, 1, 2]] and distances.tolist() == [[0, 1, 1]]
    ids, _ = index.search(np.full((1, 8), -1, np.int8), k=2)
    assert ids.tolist() == [[3, 1]]  # of the tied 1 and 2, the lower id is kept


@pytest.mark.parametrize("k", [1, 7, 64, 300, 1000])
def test_exact_search_equals_numpy_reference_with_many_ties(k):
    rng = np.random.default_rng(0)
    # 8-bit codes: 300 items over 9 possible distances, so almost every rank is a tie.
    database, queries = _random_codes(rng, 300, 8), _random_codes(rng, 40, 8)
    index = HammingIndex(8)
    index.add(database[:100])
    index.add(database[100:])
    ids, distances = index.search(queries, k)
    ranking = metrics.rank_database(queries, database)[:, :k]
    np.testing.assert_array_equal(ids, ranking)
    np.testing.assert_array_equal(
        distances, np.take_along_axis(metrics.hamming_distance(queries, database), ranking, 1))
    assert ids.shape == (40, min(k, 300)) and ids.dtype == np.int64 and distances.dtype == np.int32


def test_ids_in_any_order_rank_like_the_reference():
    rng = np.random.default_rng(1)
    database, queries = _random_codes(rng, 200, 16), _random_codes(rng, 30, 16)
    ids = rng.permutation(np.arange(0, 4000, 20))
    index = HammingIndex(16)
    index.add(database[:120], ids=ids[:120])  # out of order: stored re-sorted by id
    index.add(database[120:], ids=ids[120:])
    found, distances = index.search(queries, 25)
    expected_ids, expected_distances = _reference(queries, database, ids, 25)
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(index.ids(), np.sort(ids))
    # 4000 > 2**16 is not needed for int32: ids are stored as int32, not int64.
    assert index.nbytes == 200 * 2 + 200 * 4


def test_default_ids_cost_no_memory_and_continue():
    index = HammingIndex(64)
    rng = np.random.default_rng(2)
    assert index.add(_random_codes(rng, 10, 64)).tolist() == list(range(10))
    assert index.add(_random_codes(rng, 5, 64)).tolist() == list(range(10, 15))
    assert index.nbytes == 15 * 8  # 8 bytes per 64-bit code, no id array
    assert index.metadata([14, 0]) == [{}, {}]
    with pytest.raises(KeyError, match=r"\[-1, 15\]"):
        index.metadata([15, 3, -1])
    index.add(_random_codes(rng, 2, 64), ids=[20, 21])  # a gap: ids are stored from now on
    assert index.ids().tolist() == list(range(15)) + [20, 21] and index.nbytes == 17 * 12


def test_bad_ids_are_refused():
    index = HammingIndex(8)
    codes = _random_codes(np.random.default_rng(3), 3, 8)
    index.add(codes, ids=[5, 6, 7])
    with pytest.raises(ValueError, match=r"already in the index: \[6\]"):
        index.add(codes, ids=[1, 6, 9])
    with pytest.raises(ValueError, match=r"repeat within this add: \[4\]"):
        index.add(codes, ids=[4, 4, 8])
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        index.add(codes, ids=[-1, 2, 3])
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        index.add(codes, ids=[1, 2])
    assert index.count == 3


def test_metadata_is_returned_with_results():
    codes = np.array([[1] * 8, [-1] * 8, [1] * 4 + [-1] * 4], np.int8)
    index = HammingIndex(8)
    index.add(codes[:2], ids=[10, 20], metadata=[{"file": "a.png", "caption": "a beach"},
                                                  {"file": "b.png", "caption": "a forest"}])
    index.add(codes[2:], ids=[30])  # no metadata for this one
    items = index.search_items(np.array([[1] * 8], np.int8), k=3)
    assert items == [[{"id": 10, "hamming": 0, "file": "a.png", "caption": "a beach"},
                      {"id": 30, "hamming": 4},
                      {"id": 20, "hamming": 8, "file": "b.png", "caption": "a forest"}]]
    assert index.metadata([20, 30]) == [{"file": "b.png", "caption": "a forest"}, {}]
    with pytest.raises(KeyError, match=r"\[11\]"):
        index.metadata([11])
    with pytest.raises(ValueError, match="JSON"):
        index.add(codes[:1], metadata=[{"file": object()}])


def test_empty_index_and_empty_queries():
    index = HammingIndex(8)
    ids, distances = index.search(np.ones((2, 8), np.int8), k=5)
    assert ids.shape == (2, 0) and distances.shape == (2, 0)
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(np.ones((2, 8), np.int8), k=0)


def _clustered(rng, centers, per_center, flips):
    """Noisy copies of packed 64-bit center codes: `flips` random bits flipped each."""
    bits = np.unpackbits(np.repeat(centers, per_center, axis=0), axis=1)
    for row in bits:
        row[rng.choice(64, flips, replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def test_trained_centroids_recover_separated_clusters():
    rng = np.random.default_rng(4)
    centers = rng.integers(0, 256, size=(6, 8), dtype=np.uint8)
    codes = _clustered(rng, centers, 40, flips=3)
    centroids = hamming_index.train_centroids(codes, 6, np.random.default_rng(0))
    assert sorted(map(bytes, centroids)) == sorted(map(bytes, centers))


def test_ivf_finds_the_exact_distances_and_auto_switches():
    rng = np.random.default_rng(5)
    centers = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    codes = _clustered(rng, centers, 50, flips=4)
    queries = _clustered(rng, centers, 3, flips=4)
    exact = HammingIndex(64, kind="flat")
    exact.add(codes)
    exact_ids, exact_distances = exact.search(queries, 10)
    index = HammingIndex(64, kind="auto", approximate_above=300, nlist=8, nprobe=2)
    index.add(codes[:250])
    index.search(queries, 10)
    assert index.structure == "flat"
    index.add(codes[250:])
    ids, distances = index.search(queries, 10)
    assert index.structure == "ivf" and index.nlist == 8
    # Tie-aware recall: every returned item is as near as the exact 10th neighbour.
    np.testing.assert_array_equal(distances, exact_distances)
    order = np.lexsort((ids, distances), axis=-1)
    np.testing.assert_array_equal(order, np.broadcast_to(np.arange(10), order.shape))
    np.testing.assert_array_equal(np.take_along_axis(metrics.hamming_distance(
        np.unpackbits(queries, axis=1), np.unpackbits(codes, axis=1)), ids, 1), distances)
    # Adding below the stored ids re-sorts the IVF too; every code is still found.
    index.add(codes[:5], ids=np.arange(1000, 1005))
    index.add(codes[5:7], ids=[998, 999])
    assert index.count == 407 and index.structure == "ivf"
    self_ids, self_distances = index.search(codes[:1], 2)
    assert self_ids.tolist() == [[0, 1000]] and self_distances.tolist() == [[0, 0]]
    assert index.search(codes[6:7], 2)[0].tolist() == [[6, 999]]


def test_ivf_with_all_lists_probed_is_exact_in_distances():
    rng = np.random.default_rng(6)
    database, queries = _random_codes(rng, 500, 32), _random_codes(rng, 20, 32)
    index = HammingIndex(32, kind="ivf", nlist=16, nprobe=16)
    index.add(database)
    _, distances = index.search(queries, 20)
    _, expected = _reference(queries, database, np.arange(500), 20)
    np.testing.assert_array_equal(distances, expected)


def _saved(tmp_path, **kwargs):
    rng = np.random.default_rng(7)
    index = HammingIndex(16, info={"run": "runs/x"}, **kwargs)
    index.add(_random_codes(rng, 60, 16), ids=np.arange(100, 160),
              metadata=[{"file": f"{i}.png", "caption": "é\t\"x\""} for i in range(60)])
    path = str(tmp_path / "archive.index")
    index.save(path)
    return index, path, _random_codes(rng, 5, 16)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    index, path, queries = _saved(tmp_path, kind=kind, nlist=4, nprobe=3)
    loaded = HammingIndex.load(path, bits=16)
    assert (loaded.count, loaded.bits, loaded.structure, loaded.nprobe) == (60, 16, kind, 3)
    assert loaded.info == {"run": "runs/x"}
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7)):
        np.testing.assert_array_equal(a, b)
    assert loaded.search_items(queries, 7) == index.search_items(queries, 7)
    assert loaded.metadata([159]) == [{"file": "59.png", "caption": "é\t\"x\""}]
    loaded.add(np.ones((1, 16), np.int8))  # a loaded index keeps growing
    assert loaded.ids()[-1] == 160


def test_refused_files_name_the_file(tmp_path):
    _, path, _ = _saved(tmp_path)
    data = open(path, "rb").read()

    def write(name, content):
        bad = str(tmp_path / name)
        with open(bad, "wb") as f:
            f.write(content)
        return bad

    with pytest.raises(FileNotFoundError, match="nothing.index"):
        HammingIndex.load(str(tmp_path / "nothing.index"))
    for cut in (10, 60, len(data) // 2, len(data) - 1):
        bad = write(f"cut{cut}.index", data[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.index: truncated"):
            HammingIndex.load(bad)
    bad = write("flipped.index", data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    with pytest.raises(ValueError, match="flipped.index: checksum mismatch"):
        HammingIndex.load(bad)
    bad = write("long.index", data + b"\0")
    with pytest.raises(ValueError, match="long.index: 1 unexpected bytes"):
        HammingIndex.load(bad)
    bad = write("other.index", b"PK\3\4" + data[4:])
    with pytest.raises(ValueError, match="other.index: not a Hamming index file"):
        HammingIndex.load(bad)
    bad = write("v9.index", data[:8] + struct.pack("<I", 9) + data[12:])
    with pytest.raises(ValueError, match="v9.index: Hamming index format version 9"):
        HammingIndex.load(bad)
    with pytest.raises(ValueError, match="archive.index: holds 16-bit codes, expected 64-bit"):
        HammingIndex.load(path, bits=64)


def test_constructor_checks():
    with pytest.raises(ValueError, match="multiple of 8"):
        HammingIndex(12)
    with pytest.raises(ValueError, match="kind='hnsw'"):
        HammingIndex(8, kind="hnsw")
    with pytest.raises(ValueError, match="nprobe"):
        HammingIndex(8, nprobe=0)
    assert hamming_index.default_nlist(10_000_000) == 4096
    assert hamming_index.default_nlist(1_000_000) == 1024
    assert hamming_index.default_nlist(100) == 12 and hamming_index.default_nlist(3) == 1


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_codes_returns_the_stored_packed_codes_by_id(kind):
    rng = np.random.default_rng(3)
    codes = np.where(rng.random((300, 64)) < 0.5, -1, 1).astype(np.int8)
    ids = np.arange(1000, 1300) * 7
    index = HammingIndex(64, kind=kind, nlist=4 if kind == "ivf" else None)
    index.add(codes, ids=ids)
    index.build()
    picked = ids[[5, 0, 299]]
    np.testing.assert_array_equal(index.codes(picked), np.packbits(codes[[5, 0, 299]] > 0, axis=1))
    with pytest.raises(KeyError, match="ids not in the index"):
        index.codes([3])
