"""Tests for rs_hashing.training.noise_weights (hand-computed values)."""

import numpy as np
import pytest

from rs_hashing.training import noise_weights

SCORES = np.array([0.0, 0.2, 0.5, 0.9, 1.0])


def test_probability_weights_are_the_scores():
    np.testing.assert_allclose(noise_weights.pair_weights(SCORES, "probability"), SCORES, rtol=1e-7)


def test_cubed_weights():
    np.testing.assert_allclose(noise_weights.pair_weights(SCORES, "cubed"), [0.0, 0.008, 0.125, 0.729, 1.0],
                               rtol=1e-6)


def test_threshold_weights_from_hand_made_real_and_fake_means():
    # Real mean (0.9 + 0.7 + 0.8) / 3 = 0.8, fake mean (0.1 + 0.3 + 0.2) / 3 = 0.2: threshold 0.5.
    threshold = noise_weights.midpoint_threshold([0.9, 0.7, 0.8], [0.1, 0.3, 0.2])
    assert threshold == pytest.approx(0.5)
    # Strictly above: a score equal to the threshold gets weight 0 (the authors' `gt`).
    weights = noise_weights.pair_weights(SCORES, "threshold", threshold)
    assert weights.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert weights.dtype == np.float32
    assert noise_weights.pair_weights([0.31, 0.3], "threshold", 0.3).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("scores, weighting, threshold, message", [
    ([0.5, np.nan], "probability", None, "non-finite"),
    ([0.5, 1.5], "cubed", None, r"must lie in \[0, 1\]"),
    ([-0.1], "probability", None, r"must lie in \[0, 1\]"),
    ([0.5], "threshold", None, "needs a finite threshold"),
    ([0.5], "threshold", float("nan"), "needs a finite threshold"),
    ([0.5], "squared", None, "noise_weighting='squared' is not one of"),
    ([[0.5]], "probability", None, "must be 1-D"),
])
def test_bad_scores_and_settings_are_errors(scores, weighting, threshold, message):
    with pytest.raises(ValueError, match=message):
        noise_weights.pair_weights(scores, weighting, threshold)


def test_pair_weights_are_checked_finite_and_in_unit_interval():
    assert noise_weights.check_pair_weights([0, 0.5, 1]).tolist() == [0, 0.5, 1]
    for bad in ([np.inf], [1.01], [-1e-3]):
        with pytest.raises(ValueError, match="pair weights"):
            noise_weights.check_pair_weights(bad)


def test_roc_auc_hand_computed():
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 1 + 0 + 1 + 1 = 3 of 4.
    assert noise_weights.roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    # A tie counts one half.
    assert noise_weights.roc_auc([0.5, 0.5, 0.9], [True, False, True]) == pytest.approx(0.75)
    assert noise_weights.roc_auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert noise_weights.roc_auc([0.9, 0.8], [True, True]) is None
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        noise_weights.roc_auc([0.1, 0.2], [True])
