"""Hamming-ranking retrieval metrics for binary hash codes (NumPy only).

Codes are [N, K] arrays of +-1 (the sign of a hashing head's output) or {0, 1} bits.
Every metric ranks the whole database by Hamming distance to each query and breaks
ties stably by database index, so a result never depends on the sort algorithm.

Two mAP@k definitions are provided and must be reported under distinct names:

* ``protocol="duch"``: the definition of the DUCH/CHNR authors (see METHOD.md, "mAP@20
  as the authors define it"). With R relevant items in the database and
  R' = min(k, R), take the 1-based positions r_1 < ... < r_R' of the first R' relevant
  items *anywhere* in the ranking; AP = (1/R') * sum_j j / r_j. Relevant items ranked
  beyond k still count, so it is not a top-k metric.
* ``protocol="truncated"``: the usual top-k AP. Only the first k ranks are looked at;
  AP = (1/n_k) * sum over relevant ranks p <= k of precision@p, where n_k is the number
  of relevant items in the top k; AP = 0 when n_k = 0.

With ``k=None`` both equal ordinary (full-ranking) AP. A query without any relevant
item in the database gets AP = 0 under both protocols and still counts in the mean,
so mAP is never inflated by dropping hard queries.

Queries are processed in chunks so that memory stays bounded for large databases.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

PROTOCOLS = ("duch", "truncated")
DEFAULT_PRECISION_KS = (1, 5, 10, 20, 50, 100)
TASKS = {
    # task name: (query modality, database modality)
    "i2t": ("image", "text"),
    "t2i": ("text", "image"),
    "i2i": ("image", "image"),
    "t2t": ("text", "text"),
}

# Upper bound on query_chunk * database_size for the per-chunk [Qc, D] work arrays
# (distances, ranking, sorted relevance); 2**22 elements keeps each well under 100 MB.
_CHUNK_ELEMENTS = 1 << 22


def to_bits(codes: ArrayLike, name: str = "codes") -> np.ndarray:
    """Converts +-1 or {0, 1} codes to a uint8 {0, 1} bit array.

    Args:
        codes: [N, K] array, K >= 1, whose values are all in {-1, +1} (any int, float
            or bool dtype) or all in {0, 1}. +1 maps to bit 1 and -1 to bit 0.
        name: name used in error messages.

    Returns:
        uint8 array [N, K] of 0/1.

    Raises:
        ValueError: if the array is not 2-D, has no bits, contains NaN, or mixes
            values outside one of the two alphabets (e.g. {-1, 0, 1} or 0.3).
    """
    array = np.asarray(codes)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, K] array, got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one bit, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must be numeric or bool, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise ValueError(f"{name} contains NaN")
    is_one = array == 1
    if np.all(is_one | (array == 0)) or np.all(is_one | (array == -1)):
        return is_one.astype(np.uint8)
    raise ValueError(
        f"{name} must hold only +-1 values or only {{0, 1}} values; found values "
        f"{np.unique(array)[:6].tolist()} (first 6 distinct)")


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """Packs [N, K] bits into [N, ceil(K/64)] uint64 words (zero-padded)."""
    packed = np.packbits(bits, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        # Zero padding is identical in query and database, so XOR of it is 0.
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _hamming_words(query_words: np.ndarray, database_words: np.ndarray) -> np.ndarray:
    """Hamming distances [Q, D] (int32) between packed code words."""
    distances = np.zeros((query_words.shape[0], database_words.shape[0]), dtype=np.int32)
    # One word at a time keeps the temporary at [Q, D] instead of [Q, D, W].
    for word in range(query_words.shape[1]):
        distances += np.bitwise_count(query_words[:, word, None] ^ database_words[None, :, word])
    return distances


def _check_codes(
    query_codes: ArrayLike, database_codes: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    query_bits = to_bits(query_codes, "query_codes")
    database_bits = to_bits(database_codes, "database_codes")
    if query_bits.shape[1] != database_bits.shape[1]:
        raise ValueError(
            f"code lengths differ: query_codes has {query_bits.shape[1]} bits, "
            f"database_codes has {database_bits.shape[1]}")
    return query_bits, database_bits


def _check_relevant(relevant: ArrayLike, num_queries: int, database_size: int) -> np.ndarray:
    array = np.asarray(relevant)
    if array.shape != (num_queries, database_size):
        raise ValueError(
            f"relevant must have shape [Q, D] = {(num_queries, database_size)}, "
            f"got {array.shape}")
    if array.dtype == np.bool_:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"relevant must be bool or 0/1, got dtype {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        raise ValueError("relevant must be bool or hold only 0/1 values")
    return array.astype(bool)


def _check_metric_inputs(
    query_codes: ArrayLike, database_codes: ArrayLike, relevant: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    query_bits, database_bits = _check_codes(query_codes, database_codes)
    if query_bits.shape[0] == 0 or database_bits.shape[0] == 0:
        raise ValueError(
            f"need at least one query and one database item, got "
            f"{query_bits.shape[0]} queries and {database_bits.shape[0]} database items")
    relevant = _check_relevant(relevant, query_bits.shape[0], database_bits.shape[0])
    return query_bits, database_bits, relevant


def _check_k(k: int | None, name: str = "k") -> None:
    if k is None:
        return
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name} must be a positive int or None, got {k!r}")


def _query_chunks(num_queries: int, database_size: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, database_size))
    for start in range(0, num_queries, step):
        yield slice(start, min(start + step, num_queries))


def _stable_rank(distances: np.ndarray, num_bits: int) -> np.ndarray:
    """Argsorts each row of a distance matrix, ties by index (stable)."""
    # Distances lie in [0, K]; NumPy's stable sort is a radix sort for 8/16-bit ints,
    # several times faster than the merge sort it uses on int32.
    if num_bits <= np.iinfo(np.uint8).max:
        distances = distances.astype(np.uint8)
    elif num_bits <= np.iinfo(np.uint16).max:
        distances = distances.astype(np.uint16)
    return np.argsort(distances, axis=1, kind="stable")


def _sorted_relevance(
    query_bits: np.ndarray, database_bits: np.ndarray, relevant: np.ndarray
) -> Iterator[np.ndarray]:
    """Yields, chunk by chunk of queries, relevance [Qc, D] in Hamming-rank order."""
    query_words = _pack_words(query_bits)
    database_words = _pack_words(database_bits)
    for rows in _query_chunks(query_bits.shape[0], database_bits.shape[0]):
        order = _stable_rank(_hamming_words(query_words[rows], database_words),
                             query_bits.shape[1])
        yield np.take_along_axis(relevant[rows], order, axis=1)


def hamming_distance(query_codes: ArrayLike, database_codes: ArrayLike) -> np.ndarray:
    """Hamming distances between every query and every database code.

    Args:
        query_codes: [Q, K] +-1 or {0, 1} codes.
        database_codes: [D, K] codes in either form.

    Returns:
        int32 array [Q, D].
    """
    query_bits, database_bits = _check_codes(query_codes, database_codes)
    return _hamming_words(_pack_words(query_bits), _pack_words(database_bits))


def rank_database(query_codes: ArrayLike, database_codes: ArrayLike) -> np.ndarray:
    """Database indices [Q, D] sorted by Hamming distance, ties by lower index first."""
    query_bits, database_bits = _check_codes(query_codes, database_codes)
    distances = _hamming_words(_pack_words(query_bits), _pack_words(database_bits))
    return _stable_rank(distances, query_bits.shape[1])


def _average_precision_sorted(
    sorted_relevant: np.ndarray, k: int | None, protocol: str
) -> np.ndarray:
    """Per-query AP from relevance [Q, D] already in rank order."""
    database_size = sorted_relevant.shape[1]
    if protocol == "truncated" and k is not None:
        # Only the top k ranks exist for the truncated protocol.
        sorted_relevant = sorted_relevant[:, :min(k, database_size)]
    num_queries = sorted_relevant.shape[0]
    # Work on the relevant entries only: nonzero() lists them row by row with ranks
    # ascending, so an entry's order within its row is j (1-based) and its column + 1
    # is its rank r_j.
    rows, columns = np.nonzero(sorted_relevant)
    per_row = np.bincount(rows, minlength=num_queries)
    row_starts = np.cumsum(per_row) - per_row
    order_in_row = np.arange(1, rows.size + 1) - row_starts[rows]
    if protocol == "duch":
        counted = per_row if k is None else np.minimum(per_row, k)
        # Only the first R' = min(k, R) relevant items count, wherever they rank.
        keep = order_in_row <= counted[rows]
        rows, columns, order_in_row = rows[keep], columns[keep], order_in_row[keep]
    else:
        counted = per_row  # relevant items found in the (truncated) ranking
    precision_sum = np.bincount(rows, weights=order_in_row / (columns + 1.0),
                                minlength=num_queries)
    return np.divide(precision_sum, counted, out=np.zeros(num_queries), where=counted > 0)


def average_precision(
    query_codes: ArrayLike,
    database_codes: ArrayLike,
    relevant: ArrayLike,
    k: int | None = 20,
    protocol: str = "duch",
) -> np.ndarray:
    """Per-query average precision under Hamming ranking.

    Args:
        query_codes: [Q, K] +-1 or {0, 1} codes.
        database_codes: [D, K] codes.
        relevant: bool [Q, D]; relevant[q, d] says database item d is relevant to q.
        k: cut-off (positive int), or None for the whole ranking. A k larger than D
            behaves like None.
        protocol: "duch" (the authors' mAP@k) or "truncated" (usual top-k AP); see
            the module docstring.

    Returns:
        float64 array [Q]. Queries with no relevant item in the database get 0.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    _check_k(k)
    query_bits, database_bits, relevant = _check_metric_inputs(
        query_codes, database_codes, relevant)
    return np.concatenate([
        _average_precision_sorted(chunk, k, protocol)
        for chunk in _sorted_relevance(query_bits, database_bits, relevant)])


def map_at_k(
    query_codes: ArrayLike,
    database_codes: ArrayLike,
    relevant: ArrayLike,
    k: int | None = 20,
    protocol: str = "duch",
) -> float:
    """Mean of `average_precision` over all queries (see it for the arguments)."""
    return float(np.mean(average_precision(query_codes, database_codes, relevant,
                                           k=k, protocol=protocol)))


def map_at_k_by_similarity(
    query_vectors: ArrayLike,
    database_vectors: ArrayLike,
    relevant: ArrayLike,
    k: int | None = 20,
    protocol: str = "duch",
) -> float:
    """mAP@k of a ranking by cosine similarity of real-valued vectors (the hash heads'
    continuous outputs), best first, ties by database index: the ceiling the signs of
    the same vectors (`map_at_k`) are measured against.

    Args:
        query_vectors: [Q, K] float vectors; database_vectors: [D, K].
        relevant, k, protocol: as `average_precision`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    _check_k(k)
    query = np.asarray(query_vectors, np.float64)
    database = np.asarray(database_vectors, np.float64)
    if query.ndim != 2 or database.ndim != 2 or query.shape[1] != database.shape[1]:
        raise ValueError(f"vectors must be [Q, K] and [D, K], got {query.shape} and {database.shape}")
    relevant = _check_relevant(relevant, len(query), len(database))
    unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # noqa: E731
    query, database = unit(query), unit(database)
    precisions = []
    for rows in _query_chunks(len(query), len(database)):
        order = np.argsort(-(query[rows] @ database.T), axis=1, kind="stable")
        precisions.append(_average_precision_sorted(np.take_along_axis(relevant[rows], order, axis=1), k,
                                                    protocol))
    return float(np.mean(np.concatenate(precisions)))


def _precision_cutoffs(ks: Sequence[int], database_size: int) -> dict[int, int]:
    """Validates `ks` and maps each k to the number of ranks it can look at."""
    ks = [int(k) if isinstance(k, np.integer) else k for k in ks]
    if not ks:
        raise ValueError("ks must not be empty")
    for k in ks:
        if k is None:
            raise ValueError("ks must be positive ints; None is not a precision cut-off")
        _check_k(k, "each of ks")
    return {k: min(k, database_size) for k in ks}


def _add_precision_sums(
    sorted_relevant: np.ndarray, cutoffs: Mapping[int, int], totals: dict[int, float]
) -> None:
    """Adds each query's precision@k (rank-ordered relevance) into `totals[k]`."""
    hits = np.cumsum(sorted_relevant[:, :max(cutoffs.values())], axis=1, dtype=np.int64)
    for k, cutoff in cutoffs.items():
        totals[k] += float(np.sum(hits[:, cutoff - 1])) / cutoff


def precision_at_k(
    query_codes: ArrayLike,
    database_codes: ArrayLike,
    relevant: ArrayLike,
    ks: Sequence[int] = DEFAULT_PRECISION_KS,
) -> dict[int, float]:
    """Mean precision of the top-k Hamming ranking for each k in `ks`.

    A k larger than the database size D uses the whole ranking and divides by D
    (the number of items actually retrieved), so it never reports an impossible score.

    Returns:
        {k: mean over queries of (relevant items in top min(k, D)) / min(k, D)}.
    """
    query_bits, database_bits, relevant = _check_metric_inputs(
        query_codes, database_codes, relevant)
    cutoffs = _precision_cutoffs(ks, database_bits.shape[0])
    totals = dict.fromkeys(cutoffs, 0.0)
    for chunk in _sorted_relevance(query_bits, database_bits, relevant):
        _add_precision_sums(chunk, cutoffs, totals)
    return {k: total / query_bits.shape[0] for k, total in totals.items()}


def pr_curve_by_radius(
    query_codes: ArrayLike, database_codes: ArrayLike, relevant: ArrayLike
) -> dict[str, np.ndarray]:
    """Precision and recall of Hamming-ball retrieval for every radius 0..K.

    At radius r a query retrieves every database item at distance <= r.

    * precision[r] is averaged over the queries that retrieve at least one item at
      radius r (the usual convention in hashing papers: 0/0 is skipped, not counted
      as 0 or 1); it is NaN when no query retrieves anything at that radius.
    * recall[r] is averaged over the queries with at least one relevant item in the
      database (recall is undefined for the others); NaN if there is none.

    Returns:
        {"radius": int [K+1], "precision": float [K+1], "recall": float [K+1]}.
    """
    query_bits, database_bits, relevant = _check_metric_inputs(
        query_codes, database_codes, relevant)
    num_bits = query_bits.shape[1]
    num_radii = num_bits + 1
    query_words = _pack_words(query_bits)
    database_words = _pack_words(database_bits)
    precision_sum = np.zeros(num_radii)
    precision_count = np.zeros(num_radii, dtype=np.int64)
    recall_sum = np.zeros(num_radii)
    recall_count = 0
    for rows in _query_chunks(query_bits.shape[0], database_bits.shape[0]):
        distances = _hamming_words(query_words[rows], database_words)
        chunk_size = distances.shape[0]
        # Histogram of distances per query via one bincount over (query, distance).
        flat = (np.arange(chunk_size)[:, None] * num_radii + distances).ravel()
        size = chunk_size * num_radii
        retrieved = np.bincount(flat, minlength=size).reshape(chunk_size, num_radii)
        hits = np.bincount(flat, weights=relevant[rows].ravel(),
                           minlength=size).reshape(chunk_size, num_radii)
        retrieved = np.cumsum(retrieved, axis=1)
        hits = np.cumsum(hits, axis=1)
        has_retrieved = retrieved > 0
        precision_sum += np.where(
            has_retrieved, hits / np.maximum(retrieved, 1), 0.0).sum(axis=0)
        precision_count += has_retrieved.sum(axis=0)
        num_relevant = hits[:, -1]
        has_relevant = num_relevant > 0
        recall_sum += (hits[has_relevant] / num_relevant[has_relevant, None]).sum(axis=0)
        recall_count += int(has_relevant.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(precision_count > 0,
                             precision_sum / np.maximum(precision_count, 1), np.nan)
    recall = recall_sum / recall_count if recall_count else np.full(num_radii, np.nan)
    return {"radius": np.arange(num_radii), "precision": precision, "recall": recall}


def relevance_from_labels(query_labels: ArrayLike, database_labels: ArrayLike) -> np.ndarray:
    """Relevance matrix from labels: same class, or any shared label for multi-hot.

    Args:
        query_labels: [Q] class labels (any comparable dtype) or [Q, C] multi-hot 0/1.
        database_labels: [D] or [D, C], the same kind as `query_labels`.

    Returns:
        bool [Q, D].
    """
    query = np.asarray(query_labels)
    database = np.asarray(database_labels)
    if query.ndim != database.ndim or query.ndim not in (1, 2):
        raise ValueError(
            f"labels must both be 1-D class labels or both 2-D multi-hot arrays, got "
            f"query_labels shape {query.shape} and database_labels shape {database.shape}")
    for name, array in (("query_labels", query), ("database_labels", database)):
        if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
            raise ValueError(f"{name} contains NaN")
    if query.ndim == 1:
        return query[:, None] == database[None, :]
    if query.shape[1] != database.shape[1]:
        raise ValueError(
            f"multi-hot label widths differ: query_labels has {query.shape[1]} classes, "
            f"database_labels has {database.shape[1]}")
    for name, array in (("query_labels", query), ("database_labels", database)):
        if not np.all((array == 0) | (array == 1)):
            raise ValueError(
                f"{name} is 2-D, so it must be multi-hot 0/1; pass class ids as a 1-D array")
    # float32 matmul counts shared labels exactly (integers below 2**24).
    shared = query.astype(np.float32) @ database.astype(np.float32).T
    return shared > 0


def evaluate_retrieval(
    codes: Mapping[str, ArrayLike],
    labels: Mapping[str, ArrayLike],
    k: int = 20,
    precision_ks: Sequence[int] = DEFAULT_PRECISION_KS,
) -> dict[str, dict]:
    """Cross- and uni-modal retrieval scores for one set of codes.

    Args:
        codes: {"query_image", "query_text", "database_image", "database_text"} codes.
        labels: {"query", "database"} labels (see `relevance_from_labels`).
        k: the mAP cut-off (a positive int; it names the result keys).
        precision_ks: cut-offs for precision@k.

    Returns:
        {f"map@{k}": {task: float}, f"map@{k}_truncated": {task: float},
         "precision@k": {task: {k: float}}} for tasks "i2t" (image queries, text
        database), "t2i", "i2i" and "t2t". f"map@{k}" uses the authors' protocol.
    """
    missing = [key for key in ("query_image", "query_text", "database_image",
                               "database_text") if key not in codes]
    if missing:
        raise ValueError(f"codes is missing {missing}; got keys {sorted(codes)}")
    missing = [key for key in ("query", "database") if key not in labels]
    if missing:
        raise ValueError(f"labels is missing {missing}; got keys {sorted(labels)}")
    if k is None:
        raise ValueError("evaluate_retrieval needs an int k (it names the keys, e.g. map@20)")
    _check_k(k)
    relevant = relevance_from_labels(labels["query"], labels["database"])
    results: dict[str, dict] = {f"map@{k}": {}, f"map@{k}_truncated": {}, "precision@k": {}}
    for task, (query_modality, database_modality) in TASKS.items():
        query_bits, database_bits, task_relevant = _check_metric_inputs(
            codes[f"query_{query_modality}"], codes[f"database_{database_modality}"],
            relevant)
        cutoffs = _precision_cutoffs(precision_ks, database_bits.shape[0])
        precision_totals = dict.fromkeys(cutoffs, 0.0)
        ap_duch, ap_truncated = [], []
        # One ranking per task serves all three metrics.
        for chunk in _sorted_relevance(query_bits, database_bits, task_relevant):
            ap_duch.append(_average_precision_sorted(chunk, k, "duch"))
            ap_truncated.append(_average_precision_sorted(chunk, k, "truncated"))
            _add_precision_sums(chunk, cutoffs, precision_totals)
        num_queries = query_bits.shape[0]
        results[f"map@{k}"][task] = float(np.mean(np.concatenate(ap_duch)))
        results[f"map@{k}_truncated"][task] = float(np.mean(np.concatenate(ap_truncated)))
        results["precision@k"][task] = {
            cutoff_k: total / num_queries for cutoff_k, total in precision_totals.items()}
    return results
