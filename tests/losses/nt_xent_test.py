"""Tests for rs_hashing.losses.nt_xent against an explicit numpy reference."""

import math

import numpy as np
import pytest

from rs_hashing.losses.nt_xent import nt_xent_loss
from rs_hashing.losses.weighting import weighted_mean


def numpy_nt_xent_rows(view_a, view_b, temperature):
    """SimCLR NT-Xent, written loop by loop: the loss of each of the 2N rows."""
    rows = np.concatenate([view_a, view_b]).astype("float64")
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    num_items = len(view_a)
    losses = []
    for r in range(2 * num_items):
        positive = (r + num_items) % (2 * num_items)
        numerator = math.exp(rows[r] @ rows[positive] / temperature)
        denominator = sum(
            math.exp(rows[r] @ rows[q] / temperature) for q in range(2 * num_items) if q != r
        )
        losses.append(-math.log(numerator / denominator))
    return np.array(losses)


def authors_subtract_e_rows(view_a, view_b, temperature):
    """The released code's denominator: the full row sum minus e (exact only at t = 1)."""
    rows = np.concatenate([view_a, view_b]).astype("float64")
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    similarities = np.exp(rows @ rows.T / temperature)
    denominators = similarities.sum(axis=1) - math.e
    positives = np.exp(np.sum(rows[: len(view_a)] * rows[len(view_a) :], axis=1) / temperature)
    return -np.log(np.concatenate([positives, positives]) / denominators)


@pytest.fixture
def views():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 8)).astype("float32"), rng.normal(size=(4, 8)).astype("float32")


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.1])
def test_matches_numpy_reference(views, temperature):
    view_a, view_b = views
    rows = numpy_nt_xent_rows(view_a, view_b, temperature)
    per_item = np.asarray(nt_xent_loss(view_a, view_b, temperature))
    assert per_item.shape == (4,)
    # Item i is the average of its two rows, i and N + i.
    np.testing.assert_allclose(per_item, (rows[:4] + rows[4:]) / 2, rtol=1e-5)
    # So the plain mean is the mean over all 2N rows.
    assert float(np.mean(per_item)) == pytest.approx(rows.mean(), rel=1e-5)


def test_hand_value_for_two_orthogonal_items():
    # Rows a1 = b1 = e1, a2 = b2 = e2: each row sees its positive (cos 1), its own
    # modality's other item (cos 0) and the other item's counterpart (cos 0):
    # loss = -log(e / (e + 2)) for every row, at temperature 1.
    view = np.eye(2, dtype="float32")
    expected = -math.log(math.e / (math.e + 2.0))
    np.testing.assert_allclose(np.asarray(nt_xent_loss(view, view)), [expected] * 2, rtol=1e-6)


def test_the_subtract_e_trick_is_only_right_at_temperature_one(views):
    view_a, view_b = views
    np.testing.assert_allclose(
        authors_subtract_e_rows(view_a, view_b, 1.0), numpy_nt_xent_rows(view_a, view_b, 1.0),
        rtol=1e-9,
    )
    assert not np.allclose(
        authors_subtract_e_rows(view_a, view_b, 0.5), numpy_nt_xent_rows(view_a, view_b, 0.5)
    )


def test_symmetric_and_scale_invariant(views):
    view_a, view_b = views
    forward = np.asarray(nt_xent_loss(view_a, view_b, 0.5))
    np.testing.assert_allclose(np.asarray(nt_xent_loss(view_b, view_a, 0.5)), forward, rtol=1e-6)
    scales = np.array([[0.1], [3.0], [7.0], [0.5]], "float32")
    np.testing.assert_allclose(
        np.asarray(nt_xent_loss(view_a * scales, view_b, 0.5)), forward, rtol=1e-5
    )


def test_zero_weight_removes_a_pairs_contribution_exactly(views):
    view_a, view_b = views
    per_item = nt_xent_loss(view_a, view_b, 0.5)
    weights = np.array([1.0, 1.0, 0.0, 1.0], "float32")
    # The zero-weighted pair's own rows vanish from the loss; its codes stay in the
    # batch as negatives for the other rows (as in CHNR), so the reference is the mean
    # of the other items' values computed on the full batch.
    expected = numpy_nt_xent_rows(view_a, view_b, 0.5)
    expected_items = (expected[:4] + expected[4:]) / 2
    assert float(weighted_mean(per_item, weights)) == pytest.approx(
        expected_items[[0, 1, 3]].mean(), rel=1e-5
    )


def test_bad_inputs_raise():
    good = np.ones((4, 8), "float32")
    with pytest.raises(ValueError, match=r"view_a must have shape \[N, D\]"):
        nt_xent_loss(np.ones(8, "float32"), good)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(good, np.ones((3, 8), "float32"))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(good, np.ones((4, 7), "float32"))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        nt_xent_loss(good, good, temperature=0)
