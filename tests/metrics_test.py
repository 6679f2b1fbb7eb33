"""Tests for rs_hashing.metrics: fixed codes whose scores are computed by hand."""

import numpy as np
import pytest

from rs_hashing import metrics

# One query and five database items on 4 bits. The query is 0000 and database item i
# has its first DISTANCES[i] bits set, so its Hamming distance is DISTANCES[i].
DISTANCES = [2, 0, 3, 1, 4]
QUERY_BITS = np.array([[0, 0, 0, 0]])
DATABASE_BITS = np.array([[1 if bit < distance else 0 for bit in range(4)]
                          for distance in DISTANCES])
# Ranking by distance: items 1 (d=0), 3 (d=1), 0 (d=2), 2 (d=3), 4 (d=4).
# Items 2, 3 and 4 are relevant, so the ranked relevance is [0, 1, 0, 1, 1]: the
# relevant items sit at ranks 2, 4 and 5 and R = 3.
RELEVANT = np.array([[False, False, True, True, True]])


def _pm(bits):
    """{0, 1} bits -> +-1 codes."""
    return 2 * np.asarray(bits) - 1


def _reference_average_precision(distances, relevant, k, protocol):
    """Slow per-query AP straight from the definitions, for random cross-checks."""
    result = []
    for row_distances, row_relevant in zip(distances, relevant):
        ranking = sorted(range(len(row_distances)), key=lambda i: (row_distances[i], i))
        ranked = [bool(row_relevant[i]) for i in ranking]
        if protocol == "duch":
            wanted = sum(ranked) if k is None else min(k, sum(ranked))
            positions = [p + 1 for p, hit in enumerate(ranked) if hit][:wanted]
            ap = sum(j / r for j, r in enumerate(positions, 1)) / wanted if wanted else 0.0
        else:
            top = ranked if k is None else ranked[:k]
            positions = [p + 1 for p, hit in enumerate(top) if hit]
            ap = (sum(j / r for j, r in enumerate(positions, 1)) / len(positions)
                  if positions else 0.0)
        result.append(ap)
    return np.array(result)


class TestToBits:

    def test_pm_one_and_zero_one_give_same_bits(self):
        bits = np.array([[1, 0, 1], [0, 0, 1]])
        expected = bits.astype(np.uint8)
        for codes in (bits, bits.astype(np.float32), bits.astype(bool), _pm(bits),
                      _pm(bits).astype(np.float64), _pm(bits).astype(np.int8)):
            out = metrics.to_bits(codes)
            assert out.dtype == np.uint8
            np.testing.assert_array_equal(out, expected)

    @pytest.mark.parametrize("codes, message", [
        (np.array([[0, 2]]), "only"),
        (np.array([[-1, 0, 1]]), "only"),
        (np.array([[0.5, 1.0]]), "only"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([1, -1]), "2-D"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.ones((3, 0)), "at least one bit"),
        (np.array([["a", "b"]]), "numeric"),
    ])
    def test_bad_values_raise(self, codes, message):
        with pytest.raises(ValueError, match=message):
            metrics.to_bits(codes)


class TestHammingAndRanking:

    def test_hand_example(self):
        np.testing.assert_array_equal(
            metrics.hamming_distance(QUERY_BITS, DATABASE_BITS), [DISTANCES])
        np.testing.assert_array_equal(
            metrics.rank_database(QUERY_BITS, DATABASE_BITS), [[1, 3, 0, 2, 4]])

    @pytest.mark.parametrize("num_bits", [1, 7, 8, 64, 100, 130])
    def test_hamming_matches_brute_force(self, num_bits):
        rng = np.random.default_rng(num_bits)
        query = rng.integers(0, 2, size=(6, num_bits))
        database = rng.integers(0, 2, size=(9, num_bits))
        expected = np.array([[int(np.sum(q != d)) for d in database] for q in query])
        np.testing.assert_array_equal(metrics.hamming_distance(query, database), expected)
        np.testing.assert_array_equal(metrics.hamming_distance(_pm(query), database),
                                      expected)

    def test_ties_ranked_by_lower_index_first(self):
        # Items 0, 2 and 3 are all at distance 1 from 00; item 1 is at distance 0.
        query = np.array([[0, 0]])
        database = np.array([[1, 0], [0, 0], [0, 1], [1, 0]])
        np.testing.assert_array_equal(metrics.rank_database(query, database),
                                      [[1, 0, 2, 3]])

    def test_ranking_matches_lexsort_on_random_codes(self):
        rng = np.random.default_rng(0)
        query = rng.integers(0, 2, size=(5, 3))  # 3 bits -> many ties among 40 items
        database = rng.integers(0, 2, size=(40, 3))
        distances = metrics.hamming_distance(query, database)
        expected = np.array([np.lexsort((np.arange(40), row)) for row in distances])
        np.testing.assert_array_equal(metrics.rank_database(query, database), expected)

    def test_code_length_mismatch_raises(self):
        with pytest.raises(ValueError, match="code lengths differ"):
            metrics.hamming_distance(np.ones((1, 4)), np.ones((2, 5)))


class TestAveragePrecision:

    def test_hand_example_k3(self):
        # duch, k=3: R' = min(3, 3) = 3, ranks 2, 4, 5 -> (1/2 + 2/4 + 3/5) / 3 = 1.6/3.
        assert metrics.map_at_k(QUERY_BITS, DATABASE_BITS, RELEVANT, k=3,
                                protocol="duch") == pytest.approx(1.6 / 3)
        # truncated, k=3: top 3 = [0, 1, 0], one hit at rank 2 -> (1/2) / 1 = 0.5.
        assert metrics.map_at_k(QUERY_BITS, DATABASE_BITS, RELEVANT, k=3,
                                protocol="truncated") == pytest.approx(0.5)

    def test_hand_example_full_ranking(self):
        # k=None: both are ordinary AP = (1/2 + 2/4 + 3/5) / 3 = 1.6/3.
        for protocol in metrics.PROTOCOLS:
            assert metrics.map_at_k(QUERY_BITS, DATABASE_BITS, RELEVANT, k=None,
                                    protocol=protocol) == pytest.approx(1.6 / 3)
        # A k beyond the database size is the same as the full ranking.
        assert metrics.map_at_k(QUERY_BITS, DATABASE_BITS, RELEVANT, k=50,
                                protocol="truncated") == pytest.approx(1.6 / 3)

    def test_protocols_differ_when_relevant_items_lie_beyond_k(self):
        # k=1: the top item (rank 1) is irrelevant.
        # duch: R' = min(1, 3) = 1, first relevant at rank 2 -> AP = 1/2.
        # truncated: nothing relevant in the top 1 -> AP = 0.
        assert metrics.map_at_k(QUERY_BITS, DATABASE_BITS, RELEVANT, k=1,
                                protocol="duch") == pytest.approx(0.5)
        assert metrics.map_at_k(QUERY_BITS, DATABASE_BITS, RELEVANT, k=1,
                                protocol="truncated") == 0.0
        # Only item 4 (rank 5) relevant, k=3: duch 1/5; truncated 0.
        only_last = np.array([[False, False, False, False, True]])
        assert metrics.map_at_k(QUERY_BITS, DATABASE_BITS, only_last, k=3,
                                protocol="duch") == pytest.approx(0.2)
        assert metrics.map_at_k(QUERY_BITS, DATABASE_BITS, only_last, k=3,
                                protocol="truncated") == 0.0

    def test_tie_order_changes_ap(self):
        # Both database items are at distance 1 from the query; ties go to the lower
        # index, so item 0 ranks first.
        query = np.array([[0, 0]])
        database = np.array([[1, 0], [0, 1]])
        # Item 1 relevant: ranked [0, 1] -> relevant at rank 2 -> AP = 1/2
        # (reversed tie order would give 1).
        for protocol in metrics.PROTOCOLS:
            assert metrics.map_at_k(query, database, [[False, True]], k=None,
                                    protocol=protocol) == pytest.approx(0.5)
            # Item 0 relevant: relevant at rank 1 -> AP = 1.
            assert metrics.map_at_k(query, database, [[True, False]], k=None,
                                    protocol=protocol) == pytest.approx(1.0)

    def test_query_without_relevant_items_scores_zero_and_counts_in_mean(self):
        query = np.vstack([QUERY_BITS, QUERY_BITS])
        relevant = np.vstack([RELEVANT, np.zeros((1, 5), dtype=bool)])
        for protocol in metrics.PROTOCOLS:
            per_query = metrics.average_precision(query, DATABASE_BITS, relevant, k=3,
                                                  protocol=protocol)
            assert per_query[1] == 0.0
            # Mean over both queries: (AP of query 0 + 0) / 2.
            assert metrics.map_at_k(query, DATABASE_BITS, relevant, k=3,
                                    protocol=protocol) == pytest.approx(per_query[0] / 2)

    def test_pm_and_zero_one_codes_give_identical_results(self):
        rng = np.random.default_rng(1)
        query = rng.integers(0, 2, size=(4, 8))
        database = rng.integers(0, 2, size=(12, 8))
        relevant = rng.random((4, 12)) < 0.4
        for protocol in metrics.PROTOCOLS:
            bits = metrics.average_precision(query, database, relevant, k=5, protocol=protocol)
            signs = metrics.average_precision(_pm(query).astype(np.float32),
                                              _pm(database), relevant, k=5,
                                              protocol=protocol)
            np.testing.assert_array_equal(bits, signs)

    @pytest.mark.parametrize("k", [1, 3, 20, None])
    @pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
    def test_matches_reference_on_random_codes(self, k, protocol):
        rng = np.random.default_rng(7)
        query = rng.integers(0, 2, size=(10, 6))
        database = rng.integers(0, 2, size=(30, 6))
        relevant = rng.random((10, 30)) < 0.3
        relevant[0] = False  # a query with nothing relevant
        expected = _reference_average_precision(
            metrics.hamming_distance(query, database), relevant, k, protocol)
        np.testing.assert_allclose(
            metrics.average_precision(query, database, relevant, k=k, protocol=protocol),
            expected)

    def test_chunked_processing_gives_same_result(self, monkeypatch):
        rng = np.random.default_rng(3)
        query = rng.integers(0, 2, size=(13, 8))
        database = rng.integers(0, 2, size=(20, 8))
        relevant = rng.random((13, 20)) < 0.3
        whole = metrics.average_precision(query, database, relevant, k=5)
        pr_whole = metrics.pr_curve_by_radius(query, database, relevant)
        monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)  # chunks of 2 queries
        np.testing.assert_array_equal(
            metrics.average_precision(query, database, relevant, k=5), whole)
        pr_chunked = metrics.pr_curve_by_radius(query, database, relevant)
        for key in ("precision", "recall"):
            np.testing.assert_allclose(pr_chunked[key], pr_whole[key])

    @pytest.mark.parametrize("kwargs, message", [
        ({"relevant": np.ones((1, 4), dtype=bool)}, r"shape \[Q, D\]"),
        ({"relevant": np.ones((5,), dtype=bool)}, r"shape \[Q, D\]"),
        ({"relevant": np.full((1, 5), 2)}, "0/1"),
        ({"database_codes": np.ones((5, 3))}, "code lengths differ"),
        ({"query_codes": np.zeros((0, 4))}, "at least one query"),
        ({"k": 0}, "positive int"),
        ({"k": 2.5}, "positive int"),
        ({"protocol": "top"}, "protocol"),
    ])
    def test_bad_inputs_raise(self, kwargs, message):
        arguments = {"query_codes": QUERY_BITS, "database_codes": DATABASE_BITS,
                     "relevant": RELEVANT, "k": 3, "protocol": "duch"}
        arguments.update(kwargs)
        with pytest.raises(ValueError, match=message):
            metrics.map_at_k(**arguments)


class TestPrecisionAtK:

    def test_hand_example(self):
        # Ranked relevance [0, 1, 0, 1, 1]: P@1 = 0, P@2 = 1/2, P@3 = 1/3, P@5 = 3/5.
        # P@10 looks at all 5 items and divides by 5 -> 3/5.
        result = metrics.precision_at_k(QUERY_BITS, DATABASE_BITS, RELEVANT,
                                        ks=(1, 2, 3, 5, 10))
        assert list(result) == [1, 2, 3, 5, 10]
        np.testing.assert_allclose([result[k] for k in (1, 2, 3, 5, 10)],
                                   [0, 1 / 2, 1 / 3, 3 / 5, 3 / 5])

    def test_mean_over_queries(self):
        # Second query: the relevance complement, ranked [1, 0, 1, 0, 0]
        # -> P@1 = 1, P@3 = 2/3. Means: P@1 = 1/2, P@3 = (1/3 + 2/3)/2 = 1/2.
        query = np.vstack([QUERY_BITS, QUERY_BITS])
        relevant = np.vstack([RELEVANT, ~RELEVANT])
        result = metrics.precision_at_k(query, DATABASE_BITS, relevant, ks=(1, 3))
        assert result == pytest.approx({1: 0.5, 3: 0.5})

    def test_bad_ks_raise(self):
        for ks in ((), (0,), (None,)):
            with pytest.raises(ValueError):
                metrics.precision_at_k(QUERY_BITS, DATABASE_BITS, RELEVANT, ks=ks)


class TestPrCurveByRadius:

    def test_hand_example(self):
        # Query 0 (0000): distances [2, 0, 3, 1, 4], relevant items {2, 3, 4}.
        #   retrieved per radius 0..4: 1, 2, 3, 4, 5; hits: 0, 1, 1, 2, 3
        #   precision: 0, 1/2, 1/3, 1/2, 3/5; recall: 0, 1/3, 1/3, 2/3, 1.
        # Query 1 (0101): distances [2, 2, 3, 3, 2], relevant items {0, 3}.
        #   retrieved: 0, 0, 3, 5, 5; hits: 0, 0, 1, 2, 2
        #   precision: skipped, skipped, 1/3, 2/5, 2/5; recall: 0, 0, 1/2, 1, 1.
        query = np.array([[0, 0, 0, 0], [0, 1, 0, 1]])
        relevant = np.array([[False, False, True, True, True],
                             [True, False, False, True, False]])
        curve = metrics.pr_curve_by_radius(query, DATABASE_BITS, relevant)
        np.testing.assert_array_equal(curve["radius"], [0, 1, 2, 3, 4])
        # Radii 0 and 1 average query 0 only (query 1 retrieves nothing there).
        np.testing.assert_allclose(
            curve["precision"],
            [0, 1 / 2, (1 / 3 + 1 / 3) / 2, (1 / 2 + 2 / 5) / 2, (3 / 5 + 2 / 5) / 2])
        np.testing.assert_allclose(
            curve["recall"],
            [0, (1 / 3) / 2, (1 / 3 + 1 / 2) / 2, (2 / 3 + 1) / 2, 1])

    def test_nothing_retrieved_gives_nan_precision(self):
        # Every database item is at distance >= 1, so radius 0 retrieves nothing.
        curve = metrics.pr_curve_by_radius([[0, 0]], [[1, 0], [1, 1]], [[True, False]])
        assert np.isnan(curve["precision"][0])
        np.testing.assert_allclose(curve["precision"][1:], [1, 1 / 2])
        np.testing.assert_allclose(curve["recall"], [0, 1, 1])


class TestRelevanceFromLabels:

    def test_class_ids(self):
        np.testing.assert_array_equal(
            metrics.relevance_from_labels([0, 2], [2, 0, 0, 1]),
            [[False, True, True, False], [True, False, False, False]])

    def test_multi_hot_shares_a_label(self):
        query = [[1, 0, 1], [0, 1, 0]]
        database = [[0, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 0]]
        np.testing.assert_array_equal(
            metrics.relevance_from_labels(query, database),
            [[True, True, True, False], [False, True, False, False]])

    def test_bad_labels_raise(self):
        with pytest.raises(ValueError, match="both"):
            metrics.relevance_from_labels([0, 1], [[0, 1]])
        with pytest.raises(ValueError, match="widths differ"):
            metrics.relevance_from_labels([[0, 1]], [[0, 1, 0]])
        with pytest.raises(ValueError, match="multi-hot"):
            metrics.relevance_from_labels([[3], [1]], [[0]])
        with pytest.raises(ValueError, match="NaN"):
            metrics.relevance_from_labels([np.nan], [1.0])


class TestEvaluateRetrieval:

    def _inputs(self):
        rng = np.random.default_rng(5)
        codes = {
            "query_image": rng.integers(0, 2, size=(6, 8)),
            "query_text": _pm(rng.integers(0, 2, size=(6, 8))),
            "database_image": rng.integers(0, 2, size=(15, 8)),
            "database_text": _pm(rng.integers(0, 2, size=(15, 8))),
        }
        labels = {"query": rng.integers(0, 3, size=6), "database": rng.integers(0, 3, size=15)}
        return codes, labels

    def test_key_layout_and_task_pairing(self):
        codes, labels = self._inputs()
        result = metrics.evaluate_retrieval(codes, labels, k=5, precision_ks=(1, 5))
        assert set(result) == {"map@5", "map@5_truncated", "precision@k"}
        relevant = metrics.relevance_from_labels(labels["query"], labels["database"])
        pairs = {"i2t": ("query_image", "database_text"),
                 "t2i": ("query_text", "database_image"),
                 "i2i": ("query_image", "database_image"),
                 "t2t": ("query_text", "database_text")}
        for task, (query_key, database_key) in pairs.items():
            query, database = codes[query_key], codes[database_key]
            assert result["map@5"][task] == pytest.approx(
                metrics.map_at_k(query, database, relevant, k=5, protocol="duch"))
            assert result["map@5_truncated"][task] == pytest.approx(
                metrics.map_at_k(query, database, relevant, k=5, protocol="truncated"))
            assert result["precision@k"][task] == pytest.approx(
                metrics.precision_at_k(query, database, relevant, ks=(1, 5)))
        assert set(result["map@5"]) == set(pairs)
        # The four tasks really rank different code sets.
        assert len(set(result["map@5"].values())) == 4

    def test_default_keys(self):
        codes, labels = self._inputs()
        result = metrics.evaluate_retrieval(codes, labels)
        assert set(result) == {"map@20", "map@20_truncated", "precision@k"}
        assert set(result["precision@k"]["i2t"]) == set(metrics.DEFAULT_PRECISION_KS)

    def test_missing_keys_raise(self):
        codes, labels = self._inputs()
        del codes["query_text"]
        with pytest.raises(ValueError, match="query_text"):
            metrics.evaluate_retrieval(codes, labels)


class TestMapBySimilarity:
    def test_hand_example(self):
        # One query; database cosines 0.8, -1, 0.99..., 0 -> ranks d2, d0, d3, d1.
        query = np.array([[1.0, 0.0]])
        database = np.array([[0.8, 0.6], [-1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
        relevant = np.array([[True, False, False, True]])
        # Relevant at ranks 2 and 3: AP = (1/2 + 2/3) / 2.
        assert metrics.map_at_k_by_similarity(query, database, relevant, k=20) == pytest.approx((0.5 + 2 / 3) / 2)

    def test_signs_ranked_by_similarity_equal_hamming_ranking(self):
        # For +-1 codes cosine = 1 - 2 d / K: the same order, ties by index both ways.
        rng = np.random.default_rng(0)
        query, database = np.sign(rng.normal(size=(2, 30, 16)))
        relevant = rng.random((30, 30)) < 0.3
        assert metrics.map_at_k_by_similarity(query, database, relevant, k=5) == pytest.approx(
            metrics.map_at_k(query, database, relevant, k=5))

    def test_bad_shapes_raise(self):
        with pytest.raises(ValueError, match="vectors must be"):
            metrics.map_at_k_by_similarity(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 2), bool))
