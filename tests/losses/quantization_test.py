"""Tests for rs_hashing.losses.quantization."""

import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.losses.quantization import quantization_loss


def test_hand_values():
    codes = np.array([[0.5, -0.5], [1.0, 1.0], [-1.0, 1.0]], "float32")
    targets = np.array([[1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]], "float32")
    # Row 0: (0.25 + 0.25) / 2; row 1: (4 + 0) / 2; row 2: exact match.
    np.testing.assert_allclose(np.asarray(quantization_loss(codes, targets)), [0.25, 2.0, 0.0])


def test_targets_get_no_gradient():
    codes = tf.Variable([[0.5, -0.5]])
    targets = tf.Variable([[1.0, -1.0]])
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(quantization_loss(codes, targets))
    code_gradient, target_gradient = tape.gradient(value, [codes, targets])
    # d/dh mean_k (h - b)^2 = 2 (h - b) / K.
    np.testing.assert_allclose(code_gradient.numpy(), [[-0.5, 0.5]])
    assert target_gradient is None


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"must have shape \[N, K\]"):
        quantization_loss(np.ones(4, "float32"), np.ones(4, "float32"))
    with pytest.raises(ValueError, match="same shape"):
        quantization_loss(np.ones((4, 8), "float32"), np.ones((4, 6), "float32"))
