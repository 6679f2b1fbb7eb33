"""Tests for rs_hashing.losses.weighting."""

import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.losses.weighting import weighted_mean


def test_plain_mean_without_weights():
    assert float(weighted_mean(np.array([1.0, 2.0, 3.0, 6.0], "float32"))) == pytest.approx(3.0)


def test_weighted_mean_hand_value():
    per_sample = np.array([1.0, 2.0, 3.0, 4.0], "float32")
    weights = np.array([1.0, 0.0, 2.0, 1.0], "float32")
    # (1*1 + 0*2 + 2*3 + 1*4) / (1 + 0 + 2 + 1) = 11 / 4
    assert float(weighted_mean(per_sample, weights)) == pytest.approx(2.75)


def test_weights_are_normalised_so_scale_does_not_matter():
    per_sample = np.array([1.0, 2.0, 3.0, 4.0], "float32")
    weights = np.array([0.1, 0.7, 0.3, 0.9], "float32")
    assert float(weighted_mean(per_sample, weights)) == pytest.approx(
        float(weighted_mean(per_sample, 100.0 * weights)), rel=1e-6
    )


def test_zero_weights_remove_samples_exactly():
    per_sample = np.array([1.0, 20.0, 3.0, 50.0], "float32")
    weights = np.array([1.0, 0.0, 1.0, 0.0], "float32")
    assert float(weighted_mean(per_sample, weights)) == pytest.approx(2.0)


def test_all_zero_weights_give_zero_and_finite_gradient():
    per_sample = tf.Variable([1.0, 2.0, 3.0])
    weights = tf.zeros([3])
    with tf.GradientTape() as tape:
        value = weighted_mean(per_sample, weights)
    gradient = tape.gradient(value, per_sample)
    assert float(value) == 0.0
    np.testing.assert_array_equal(gradient.numpy(), np.zeros(3))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"per_sample must have shape \[N\]"):
        weighted_mean(np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match="weights have length 3 but per_sample has length 4"):
        weighted_mean(np.ones(4, "float32"), np.ones(3, "float32"))
    with pytest.raises(ValueError, match=r"weights must have shape \[N\]"):
        weighted_mean(np.ones(4, "float32"), np.ones((4, 1), "float32"))


def test_count_normalisation_is_the_authors_weighted_sum_over_n():
    per_sample = np.array([1.0, 2.0, 3.0, 4.0], "float32")
    weights = np.array([1.0, 0.0, 2.0, 1.0], "float32")
    # (1*1 + 0*2 + 2*3 + 1*4) / 4 pairs = 11 / 4 ... and with halved weights 5.5 / 4.
    assert float(weighted_mean(per_sample, weights, normalize_by="count")) == pytest.approx(2.75)
    assert float(weighted_mean(per_sample, weights / 2, normalize_by="count")) == pytest.approx(1.375)
    assert float(weighted_mean(per_sample, weights / 2)) == pytest.approx(2.75)  # by the weights: unchanged
    with pytest.raises(ValueError, match="normalize_by must be 'weights' or 'count', got 'sum'"):
        weighted_mean(per_sample, weights, normalize_by="sum")
