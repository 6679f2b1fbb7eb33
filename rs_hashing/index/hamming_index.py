"""A Hamming-distance index over binary hash codes, on faiss binary indexes.

Codes go in as +-1 (or {0, 1}) arrays [N, K] or as packed uint8 [N, K/8] (most
significant bit first, exactly `numpy.packbits(code > 0, axis=1)`). Each item has a
non-negative integer id (row numbers 0, 1, 2, ... unless given) and optional metadata,
a JSON-serialisable dict such as {"file": "beach_12.jpg", "caption": "..."}.

Structures (`kind`):

* "flat": faiss `IndexBinaryFlat`, exact. It holds K/8 bytes of code per item, plus 4
  (or 8) bytes of id only when the ids are not 0..N-1 in order.
* "ivf": faiss `IndexBinaryIVF`, approximate. A coarse quantizer puts each code in one
  of `nlist` lists and a query scans the `nprobe` lists whose centroids are nearest to
  it. The centroids are trained here in Hamming space (farthest-first seeding, then
  k-majority updates: each centroid bit becomes the majority bit of its members).
  faiss's own IVF training runs float k-means from randomly drawn seeds, which leaves
  about a third of well-separated clusters without a centroid of their own when
  `nlist` is close to the number of clusters; their members then sit in lists whose
  centroids are far from them and are missed. K/8 + 8 bytes per item.
* "auto" (the default): exact up to `approximate_above` items, approximate above.
  The approximate index is built (its quantizer trained on the codes held) by the
  first `search`, `build` or `save` after the count passes the threshold; later adds
  go into its lists.

Tie order. faiss's `IndexBinaryFlat` (faiss/utils/hamming.cpp, `hammings_knn_hc`)
scans the stored codes in storage order and replaces the top of its max-heap of the k
best only on a strictly smaller distance; the heap compares (distance, position) pairs
and the result is sorted by them. Among equal distances the earlier-stored code
therefore wins, both in which codes are returned and in their order. This index keeps
its codes stored in increasing id order (an add with ids below stored ones re-sorts),
so exact results equal the NumPy reference `rs_hashing.metrics.rank_database` (ties by
database index) when ids are row indices, and in general are the first k by
(distance, id). Results are re-sorted by (distance, id) after faiss in every case; for
the approximate index this fixes the order, but which of several codes tied at the
k-th distance it returns is not defined.

File format (`save` / `load`), little-endian:

    b"RSHAMIDX" | uint32 format version | uint32 header length |
    32-byte SHA-256 of everything after these 48 bytes |
    header JSON (bits, count, kind, section sizes, ...) |
    faiss index bytes | ids | metadata JSON

A file that is truncated, corrupt, of another format version or of another code length
is refused with an error naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import faiss
import numpy as np
from numpy.typing import ArrayLike

from rs_hashing import metrics
from rs_hashing.atomic_files import atomic_open

MAGIC = b"RSHAMIDX"
FORMAT_VERSION = 1
KINDS = ("auto", "flat", "ivf")
DEFAULT_APPROXIMATE_ABOVE = 4_000_000
DEFAULT_NPROBE = 4
# Centroids are trained on at most this many codes per list (faiss's own IVF training
# warns below 39 and subsamples above 256).
_TRAIN_CODES_PER_LIST = 32
_TRAIN_ITERATIONS = 4
_PREFIX = struct.Struct("<8sII32s")
# Rows converted per step when packing +-1 codes, bounding the temporaries.
_PACK_CHUNK = 1 << 20
_MISSING = -1


def pack_codes(codes: ArrayLike, bits: int, name: str = "codes") -> np.ndarray:
    """Packs codes to uint8 [N, bits/8], MSB first (`numpy.packbits(code > 0, axis=1)`).

    Args:
        codes: +-1 or {0, 1} codes [N, bits] (any numeric or bool dtype), or codes
            already packed as uint8 [N, bits/8] (returned as they are).
        bits: the code length K, a positive multiple of 8.
        name: what to call `codes` in error messages.

    Raises:
        ValueError: wrong shape or values outside one of the two alphabets.
    """
    array = np.asarray(codes)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {array.shape}")
    if array.dtype == np.uint8 and array.shape[1] == bits // 8:
        return np.ascontiguousarray(array)
    if array.shape[1] != bits:
        raise ValueError(
            f"{name} has shape {array.shape} and dtype {array.dtype}; expected {bits}-bit "
            f"codes: +-1 values [N, {bits}] or packed uint8 [N, {bits // 8}]")
    packed = np.empty((array.shape[0], bits // 8), dtype=np.uint8)
    for start in range(0, array.shape[0], _PACK_CHUNK):
        rows = slice(start, start + _PACK_CHUNK)
        packed[rows] = np.packbits(metrics.to_bits(array[rows], name), axis=1)
    return packed


def _as_words(packed: np.ndarray) -> np.ndarray:
    """uint8 [N, B] -> uint64 [N, ceil(B/8)] (zero padding changes no distance)."""
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _distances_to(words: np.ndarray, row: int) -> np.ndarray:
    """Hamming distances (int64 [N]) from every row of `words` to row `row`."""
    distances = np.zeros(words.shape[0], dtype=np.int64)
    for column in range(words.shape[1]):
        distances += np.bitwise_count(words[:, column] ^ words[row, column])
    return distances


def train_centroids(codes: np.ndarray, nlist: int, rng: np.random.Generator,
                    iterations: int = _TRAIN_ITERATIONS) -> np.ndarray:
    """Coarse centroids for the IVF lists, trained in Hamming space.

    Seeds are chosen farthest-first on a sample (each next seed is the sampled code
    farthest from every seed so far), so every well-separated cluster of codes gets a
    seed before any cluster gets two; `iterations` rounds of k-majority then move each
    centroid to the bitwise majority of the sampled codes nearest to it (a tie or an
    empty list keeps the old bit).

    Args:
        codes: packed uint8 codes [N, K/8], N >= nlist.
        nlist: number of centroids.
        rng: source of the sample.
        iterations: k-majority rounds.

    Returns:
        packed uint8 centroids [nlist, K/8].
    """
    num_codes, code_size = codes.shape
    bits = code_size * 8
    if not 1 <= nlist <= num_codes:
        raise ValueError(f"nlist={nlist} must lie in [1, {num_codes}] (the number of codes)")
    sample_size = min(num_codes, _TRAIN_CODES_PER_LIST * nlist)
    sample = codes[np.sort(rng.choice(num_codes, sample_size, replace=False))]
    words = _as_words(sample)
    # Farthest-first seeding on a smaller subsample keeps its nlist passes cheap.
    seeding_rows = rng.choice(sample_size, min(sample_size, 8 * nlist), replace=False)
    seeding_words = words[seeding_rows]
    chosen = np.empty(nlist, dtype=np.int64)
    chosen[0] = rng.integers(len(seeding_words))
    nearest = _distances_to(seeding_words, chosen[0])
    for i in range(1, nlist):
        chosen[i] = int(np.argmax(nearest))
        np.minimum(nearest, _distances_to(seeding_words, chosen[i]), out=nearest)
    centroid_bits = np.unpackbits(sample[seeding_rows[chosen]], axis=1)
    sample_bits = np.unpackbits(sample, axis=1)
    for _ in range(iterations):
        quantizer = faiss.IndexBinaryFlat(bits)
        quantizer.add(np.packbits(centroid_bits, axis=1))
        _, assignment = quantizer.search(sample, 1)
        assignment = assignment.ravel()
        members = np.bincount(assignment, minlength=nlist)
        ones = np.stack([np.bincount(assignment, weights=sample_bits[:, b], minlength=nlist)
                         for b in range(bits)], axis=1)
        centroid_bits[2 * ones > members[:, None]] = 1
        centroid_bits[2 * ones < members[:, None]] = 0
    return np.packbits(centroid_bits, axis=1)


def default_nlist(count: int) -> int:
    """IVF lists for `count` codes: the smallest power of two >= sqrt(count), at most
    count / 8 so that lists are not near-empty (1 for tiny indexes).

    Recall needs more lists than the archive has clusters of codes (a list whose
    centroid stands for several clusters is far from all of them, so queries skip
    it); pass `nlist` for archives with more clusters than sqrt(count). Building costs
    count x nlist Hamming distances (about 80 s on one core for 10M codes, 4096 lists).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    nlist = 2 ** math.ceil(math.log2(math.sqrt(count)))
    return int(max(1, min(nlist, count // 8, 1 << 16)))


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _narrow_ids(ids: np.ndarray) -> np.ndarray | None:
    """None when ids are 0..N-1 (ids are positions), else int32 or int64 storage."""
    if len(ids) == 0 or (ids[0] == 0 and ids[-1] == len(ids) - 1):
        # Sorted and unique, so first 0 and last N-1 means exactly 0..N-1.
        return None
    dtype = np.int32 if ids[-1] <= np.iinfo(np.int32).max else np.int64
    return ids.astype(dtype)


class HammingIndex:
    """Top-k Hamming search over binary codes with ids and metadata (see the module
    docstring for the structures, the tie order and the file format).

    Args:
        bits: code length K, a positive multiple of 8.
        kind: "auto", "flat" (exact) or "ivf" (approximate).
        approximate_above: with kind "auto", the count above which the approximate
            index is used.
        nlist: IVF lists; None picks `default_nlist(count)` when the IVF is built.
        nprobe: IVF lists scanned per query (more: slower, higher recall); None means
            `DEFAULT_NPROBE`. Can be changed later through the `nprobe` property.
        seed: seed of the IVF training sample.
        info: JSON-serialisable dict saved with the index (e.g. the run and image
            folder it was made from).
    """

    def __init__(self, bits: int, kind: str = "auto",
                 approximate_above: int = DEFAULT_APPROXIMATE_ABOVE,
                 nlist: int | None = None, nprobe: int | None = None, seed: int = 0,
                 info: Mapping[str, Any] | None = None):
        _check_positive_int("bits", bits)
        if bits % 8:
            raise ValueError(f"bits={bits} must be a multiple of 8")
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
        _check_positive_int("approximate_above", approximate_above)
        _check_positive_int("nlist", nlist, allow_none=True)
        _check_positive_int("nprobe", nprobe, allow_none=True)
        self._bits = int(bits)
        self._kind = kind
        self._approximate_above = int(approximate_above)
        self._nlist = None if nlist is None else int(nlist)
        self._nprobe = DEFAULT_NPROBE if nprobe is None else int(nprobe)
        self._seed = int(seed)
        self.info: dict[str, Any] = dict(info or {})
        self._index = faiss.IndexBinaryFlat(self._bits)
        self._structure = "flat"
        self._ids: np.ndarray | None = None  # sorted ids by position; None: id == position
        self._metadata: list[dict | None] | None = None  # by position; None: no metadata

    # ------------------------------------------------------------------ properties

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def kind(self) -> str:
        """The requested kind: "auto", "flat" or "ivf"."""
        return self._kind

    @property
    def structure(self) -> str:
        """The faiss structure now holding the codes: "flat" or "ivf"."""
        return self._structure

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.count

    @property
    def nlist(self) -> int | None:
        """Lists of the approximate index (None while the index is exact)."""
        return int(self._index.nlist) if self._structure == "ivf" else None

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        _check_positive_int("nprobe", value)
        self._nprobe = int(value)
        if self._structure == "ivf":
            self._index.nprobe = self._nprobe

    @property
    def nbytes(self) -> int:
        """Bytes of codes, list ids and ids held (faiss's containers may reserve more
        while items are being added; metadata is not counted)."""
        code_size = self._bits // 8
        held = self.count * code_size
        if self._structure == "ivf":
            held += self.count * 8 + self._index.nlist * code_size  # list ids, centroids
        if self._ids is not None:
            held += self._ids.nbytes
        return held

    def ids(self) -> np.ndarray:
        """Every id, in increasing order (int64)."""
        if self._ids is None:
            return np.arange(self.count, dtype=np.int64)
        return self._ids.astype(np.int64)

    # ------------------------------------------------------------------ adding

    def _last_id(self) -> int:
        if self.count == 0:
            return -1
        return self.count - 1 if self._ids is None else int(self._ids[-1])

    def _check_new_ids(self, ids: ArrayLike | None, num_new: int) -> np.ndarray:
        if ids is None:
            start = self._last_id() + 1
            return np.arange(start, start + num_new, dtype=np.int64)
        array = np.asarray(ids)
        if array.shape != (num_new,):
            raise ValueError(f"ids must have shape ({num_new},) (one per code), got {array.shape}")
        if num_new == 0:
            return array.astype(np.int64)
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {array.dtype}")
        if array.min() < 0 or (array.dtype == np.uint64 and array.max() > np.iinfo(np.int64).max):
            raise ValueError(f"ids must lie in [0, 2**63), got min {array.min()} max {array.max()}")
        array = array.astype(np.int64)
        unique, counts = np.unique(array, return_counts=True)
        if len(unique) != num_new:
            raise ValueError(f"ids repeat within this add: {unique[counts > 1][:5].tolist()} "
                             "(first 5)")
        if self.count:
            taken = self._present(unique)
            if len(taken):
                raise ValueError(f"ids already in the index: {taken[:5].tolist()} (first 5)")
        return array

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Storage positions of sorted or unsorted ids (valid only for ids present)."""
        if self._ids is None:
            return ids.astype(np.int64)
        return np.minimum(np.searchsorted(self._ids, ids), max(self.count - 1, 0))

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """The given ids that are in the index."""
        if self.count == 0:
            return ids[:0]
        if self._ids is None:
            return ids[(ids >= 0) & (ids < self.count)]
        return ids[self._ids[self._positions(ids)] == ids]

    def _check_metadata(self, metadata: Sequence[Mapping[str, Any] | None] | None,
                        num_new: int) -> list[dict | None] | None:
        if metadata is None:
            return None
        if isinstance(metadata, (str, bytes, Mapping)) or len(metadata) != num_new:
            raise ValueError(f"metadata must be a sequence of {num_new} dicts (one per code)")
        checked = []
        for i, item in enumerate(metadata):
            if item is None:
                checked.append(None)
                continue
            if not isinstance(item, Mapping) or not all(isinstance(k, str) for k in item):
                raise ValueError(f"metadata[{i}] must be a dict with str keys, got {item!r}")
            try:
                json.dumps(dict(item))
            except (TypeError, ValueError) as e:
                raise ValueError(f"metadata[{i}] is not JSON-serialisable ({e})") from None
            checked.append(dict(item))
        return checked

    def add(self, codes: ArrayLike, ids: ArrayLike | None = None,
            metadata: Sequence[Mapping[str, Any] | None] | None = None) -> np.ndarray:
        """Adds codes with their ids and metadata; returns the ids (int64).

        Args:
            codes: +-1 codes [N, K] or packed uint8 [N, K/8].
            ids: N distinct non-negative integer ids not yet in the index; None
                continues after the largest id held (0, 1, 2, ... for a new index).
                Ids in increasing order above those held are appended; any other
                order re-sorts the whole index (O(count)).
            metadata: N JSON-serialisable dicts (or None entries), or None.
        """
        packed = pack_codes(codes, self._bits)
        new_ids = self._check_new_ids(ids, len(packed))
        new_metadata = self._check_metadata(metadata, len(packed))
        if len(packed) == 0:
            return new_ids
        increasing = ids is None or (bool(np.all(np.diff(new_ids) > 0))
                                     and new_ids[0] > self._last_id())
        if increasing:
            old_count = self.count
            self._index.add(packed)
            # Ids that continue 0..old_count-1 keep costing nothing; others are stored.
            continues_positions = (self._ids is None and new_ids[0] == old_count
                                   and new_ids[-1] == old_count + len(new_ids) - 1)
            if not continues_positions:
                old = np.arange(old_count) if self._ids is None else self._ids.astype(np.int64)
                self._ids = _narrow_ids(np.concatenate([old, new_ids]))
            self._extend_metadata(new_metadata, len(packed))
        else:
            self._add_resorting(packed, new_ids, new_metadata)
        return new_ids

    def _extend_metadata(self, new_metadata: list[dict | None] | None, num_new: int) -> None:
        if new_metadata is None:
            if self._metadata is not None:
                self._metadata.extend([None] * num_new)
        elif self._metadata is None:
            self._metadata = [None] * (self.count - num_new) + new_metadata
        else:
            self._metadata.extend(new_metadata)

    def _add_resorting(self, packed: np.ndarray, new_ids: np.ndarray,
                       new_metadata: list[dict | None] | None) -> None:
        """Stores old and new codes again in increasing id order (keeps the exact
        tie order equal to id order; see the module docstring)."""
        old_count = self.count
        codes = np.concatenate([self._stored_codes(), packed])
        all_ids = np.concatenate([self.ids(), new_ids])
        order = np.argsort(all_ids, kind="stable")
        if self._metadata is not None or new_metadata is not None:
            old = self._metadata if self._metadata is not None else [None] * old_count
            new = new_metadata if new_metadata is not None else [None] * len(new_ids)
            combined = old + new
            self._metadata = [combined[i] for i in order]
        self._index.reset()  # an IVF keeps its trained quantizer
        self._index.add(codes[order])
        self._ids = _narrow_ids(all_ids[order])

    def _stored_codes(self) -> np.ndarray:
        """Every stored code, packed [count, K/8], in storage (= id) order."""
        code_size = self._bits // 8
        count = self.count
        codes = np.empty((count, code_size), dtype=np.uint8)
        if count == 0:
            return codes
        if self._structure == "flat":
            codes[:] = faiss.rev_swig_ptr(self._index.xb.data(), count * code_size).reshape(
                count, code_size)
            return codes
        lists = self._index.invlists
        for list_no in range(lists.nlist):
            size = lists.list_size(list_no)
            if size:
                positions = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
                codes[positions] = faiss.rev_swig_ptr(
                    lists.get_codes(list_no), size * code_size).reshape(size, code_size)
        return codes

    # ------------------------------------------------------------------ building

    def _wants_ivf(self) -> bool:
        if self._structure != "flat" or self.count == 0:
            return False
        return self._kind == "ivf" or (self._kind == "auto" and self.count > self._approximate_above)

    def build(self) -> None:
        """Builds the approximate index now if the kind asks for one (search and save
        do this themselves); training reads the codes held at this point."""
        if not self._wants_ivf():
            return
        codes = self._stored_codes()
        nlist = min(self._nlist or default_nlist(len(codes)), len(codes))
        centroids = train_centroids(codes, nlist, np.random.default_rng(self._seed))
        quantizer = faiss.IndexBinaryFlat(self._bits)
        quantizer.add(centroids)
        ivf = faiss.IndexBinaryIVF(quantizer, self._bits, nlist)
        # The quantizer already holds nlist centroids, so faiss's train() only marks
        # the index trained and does not run its own clustering.
        ivf.train(centroids)
        ivf.nprobe = self._nprobe
        ivf.add(codes)  # ids = positions 0..count-1, as in the flat index
        self._index = ivf
        self._structure = "ivf"

    # ------------------------------------------------------------------ searching

    def _search_positions(self, query_codes: ArrayLike, k: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, ids, distances), each [Q, min(k, count)], sorted by
        (distance, id); -1 in all three where an approximate search found too few."""
        _check_positive_int("k", k)
        queries = pack_codes(query_codes, self._bits, "query_codes")
        self.build()
        top = min(int(k), self.count)
        if top == 0 or len(queries) == 0:
            empty = np.empty((len(queries), top), dtype=np.int64)
            return empty, empty.copy(), np.empty((len(queries), top), dtype=np.int32)
        distances, positions = self._index.search(queries, top)
        missing = positions < 0
        if self._ids is None:
            ids = positions.copy()
        else:
            ids = self._ids[np.where(missing, 0, positions)].astype(np.int64)
            ids[missing] = _MISSING
        if missing.any():
            distances[missing] = _MISSING
        # faiss's flat order is already (distance, position) = (distance, id); the
        # re-sort is cheap ([Q, k]) and fixes the IVF order. Missing entries go last.
        order = np.lexsort((ids, np.where(missing, self._bits + 1, distances)), axis=-1)
        take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
        return take(positions), take(ids), take(distances).astype(np.int32)

    def search(self, query_codes: ArrayLike, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query.

        Args:
            query_codes: +-1 codes [Q, K] or packed uint8 [Q, K/8].
            k: results per query (fewer when the index holds fewer codes).

        Returns:
            (ids int64 [Q, min(k, count)], Hamming distances int32 [Q, min(k, count)]),
            sorted by (distance, id). Where an approximate search finds fewer than k
            codes (raise nprobe), the rest of the row is -1 in both arrays.
        """
        _, ids, distances = self._search_positions(query_codes, k)
        return ids, distances

    def search_items(self, query_codes: ArrayLike, k: int = 10) -> list[list[dict[str, Any]]]:
        """Like `search`, as one list per query of {"id", "hamming", **metadata}."""
        positions, ids, distances = self._search_positions(query_codes, k)
        return [[{"id": int(i), "hamming": int(d), **self._metadata_at(int(p))}
                 for p, i, d in zip(row_positions, row_ids, row_distances) if i != _MISSING]
                for row_positions, row_ids, row_distances in zip(positions, ids, distances)]

    def _metadata_at(self, position: int) -> dict[str, Any]:
        if self._metadata is None or self._metadata[position] is None:
            return {}
        return dict(self._metadata[position])

    def _present_positions(self, ids: ArrayLike) -> np.ndarray:
        """Storage positions of `ids`; KeyError naming the first absent ones."""
        wanted = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        absent = np.setdiff1d(wanted, self._present(wanted))
        if len(absent):
            raise KeyError(f"ids not in the index: {absent[:5].tolist()} (first 5)")
        return self._positions(wanted)

    def codes(self, ids: ArrayLike) -> np.ndarray:
        """The stored codes of the given ids, packed uint8 [N, K/8] (MSB first), for
        "more like this" queries that need no pixels.

        Raises:
            KeyError: an id that is not in the index.
        """
        positions = self._present_positions(ids)
        if self._structure == "flat" and self.count:  # index the stored codes, no full copy
            code_size = self._bits // 8
            stored = faiss.rev_swig_ptr(self._index.xb.data(), self.count * code_size)
            return stored.reshape(self.count, code_size)[positions].copy()
        return self._stored_codes()[positions]

    def metadata(self, ids: ArrayLike) -> list[dict[str, Any]]:
        """Metadata of the given ids ({} for items added without any).

        Raises:
            KeyError: an id that is not in the index.
        """
        return [self._metadata_at(int(p)) for p in self._present_positions(ids)]

    # ------------------------------------------------------------------ files

    def save(self, path: str) -> str:
        """Writes the index to `path` atomically (building the IVF first if due)."""
        self.build()
        faiss_bytes = faiss.serialize_index_binary(self._index).tobytes()
        ids_bytes = b"" if self._ids is None else self._ids.astype(self._ids.dtype.newbyteorder("<")).tobytes()
        metadata_bytes = b"" if self._metadata is None else json.dumps(
            self._metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        header = {
            "bits": self._bits, "count": self.count, "kind": self._structure,
            "requested_kind": self._kind, "approximate_above": self._approximate_above,
            "nlist": self._nlist, "nprobe": self._nprobe, "seed": self._seed,
            "ids": "positions" if self._ids is None else str(self._ids.dtype),
            "sections": {"faiss": len(faiss_bytes), "ids": len(ids_bytes),
                         "metadata": len(metadata_bytes)},
            "info": self.info,
        }
        header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
        digest = hashlib.sha256()
        for part in (header_bytes, faiss_bytes, ids_bytes, metadata_bytes):
            digest.update(part)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        with atomic_open(path, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes), digest.digest()))
            for part in (header_bytes, faiss_bytes, ids_bytes, metadata_bytes):
                f.write(part)
        return path

    @classmethod
    def load(cls, path: str, bits: int | None = None) -> "HammingIndex":
        """Reads an index written by `save`.

        Args:
            path: the index file.
            bits: the code length the caller's codes have; a file with another one is
                refused. None accepts any.

        Raises:
            FileNotFoundError: no file at `path`.
            ValueError: the file is not an index, is of another format version, is
                truncated or corrupt, or holds codes of another length.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no Hamming index file here") from None
        if len(data) < _PREFIX.size:
            if not MAGIC.startswith(data[:len(MAGIC)]):
                raise ValueError(f"{path}: not a Hamming index file (no {MAGIC!r} magic)")
            raise ValueError(f"{path}: truncated Hamming index file ({len(data)} bytes, the "
                             f"fixed header alone is {_PREFIX.size})")
        magic, version, header_length, checksum = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise ValueError(f"{path}: not a Hamming index file (starts with {magic!r}, "
                             f"expected {MAGIC!r})")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: Hamming index format version {version}; this code reads "
                             f"version {FORMAT_VERSION} (rebuild the index)")
        body = memoryview(data)[_PREFIX.size:]
        if header_length > len(body):
            raise ValueError(f"{path}: truncated Hamming index file ({len(data)} bytes, the "
                             f"header alone needs {_PREFIX.size + header_length})")
        try:
            header = json.loads(bytes(body[:header_length]).decode("utf-8"))
            sections = header["sections"]
            sizes = [int(sections[name]) for name in ("faiss", "ids", "metadata")]
            file_bits, count, kind = int(header["bits"]), int(header["count"]), header["kind"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: corrupt Hamming index header ({e})") from None
        expected = _PREFIX.size + header_length + sum(sizes)
        if len(data) < expected:
            raise ValueError(f"{path}: truncated Hamming index file: {len(data)} bytes, its "
                             f"header says {expected} ({count} codes of {file_bits} bits)")
        if len(data) > expected:
            raise ValueError(f"{path}: {len(data) - expected} unexpected bytes after the end "
                             f"of the Hamming index ({expected} bytes)")
        if bits is not None and file_bits != bits:
            raise ValueError(f"{path}: holds {file_bits}-bit codes, expected {bits}-bit codes "
                             "(an index made with another model?)")
        if hashlib.sha256(body).digest() != checksum:
            raise ValueError(f"{path}: checksum mismatch: the Hamming index file is corrupt")
        faiss_end = header_length + sizes[0]
        ids_end = faiss_end + sizes[1]
        index = faiss.deserialize_index_binary(
            np.frombuffer(body[header_length:faiss_end], dtype=np.uint8))
        expected_type = faiss.IndexBinaryFlat if kind == "flat" else faiss.IndexBinaryIVF
        if (not isinstance(index, expected_type) or index.d != file_bits
                or index.ntotal != count):
            raise ValueError(f"{path}: the faiss index inside does not match the header "
                             f"({type(index).__name__}, d={index.d}, ntotal={index.ntotal})")
        loaded = cls(file_bits, kind=header["requested_kind"],
                     approximate_above=header["approximate_above"], nlist=header["nlist"],
                     nprobe=header["nprobe"], seed=header["seed"], info=header["info"])
        loaded._index = index
        loaded._structure = kind
        if kind == "ivf":
            index.nprobe = loaded._nprobe
        if header["ids"] != "positions":
            loaded._ids = np.frombuffer(body[faiss_end:ids_end],
                                        dtype=np.dtype(header["ids"]).newbyteorder("<")).copy()
            if len(loaded._ids) != count:
                raise ValueError(f"{path}: holds {len(loaded._ids)} ids for {count} codes")
        if sizes[2]:
            loaded._metadata = json.loads(bytes(body[ids_end:]).decode("utf-8"))
            if len(loaded._metadata) != count:
                raise ValueError(f"{path}: holds metadata for {len(loaded._metadata)} of "
                                 f"{count} codes")
        return loaded
