"""Tests for rs_hashing.losses.adversarial on hand-computable discriminators."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.losses.adversarial import discriminator_loss, generator_loss, gradient_penalty

REAL = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], "float32")
FAKE = np.array([[-1.0, 0.0], [0.0, -1.0], [0.2, -0.4]], "float32")
HALF = np.full((3, 1), 0.5, "float32")


def softplus(x):
    return np.log1p(np.exp(x))


def linear_discriminator(weights, bias=0.0):
    weights = tf.constant(weights, "float32")
    return lambda codes: tf.linalg.matvec(codes, weights) + bias


def test_generator_loss_is_bce_against_real():
    logits = np.array([-2.0, 0.0, 3.0], "float32")
    expected = [-math.log(1 / (1 + math.exp(-x))) for x in logits]
    np.testing.assert_allclose(np.asarray(generator_loss(logits)), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(generator_loss(logits[:, None])), expected, rtol=1e-6)


def test_gradient_penalty_of_linear_discriminator():
    # D(x) = w.x has input gradient w everywhere: penalty (||w|| - 1)^2 = (5 - 1)^2.
    discriminator = linear_discriminator([3.0, 4.0])
    assert float(gradient_penalty(discriminator, REAL, FAKE, HALF)) == pytest.approx(16.0)


def test_gradient_penalty_uses_the_interpolation():
    # D(x) = sum(x^2): gradient 2 x_hat, norm 2 ||x_hat||, x_hat = e real + (1 - e) fake.
    def discriminator(codes):
        return tf.reduce_sum(tf.square(codes), axis=1)

    interpolation = np.array([[1.0], [0.0], [0.5]], "float32")
    interpolated = interpolation * REAL + (1 - interpolation) * FAKE
    norms = 2 * np.linalg.norm(interpolated, axis=1)
    expected = np.mean((norms - 1) ** 2)
    value = gradient_penalty(discriminator, REAL, FAKE, interpolation)
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_discriminator_loss_hand_value():
    weights, bias = [3.0, 4.0], 0.5
    real_logits = REAL @ np.array(weights) + bias
    fake_logits = FAKE @ np.array(weights) + bias
    cross_entropy = softplus(-real_logits).mean() + softplus(fake_logits).mean()
    discriminator = linear_discriminator(weights, bias)
    value = discriminator_loss(discriminator, REAL, FAKE, HALF, gp_weight=10.0)
    assert float(value) == pytest.approx(cross_entropy + 10.0 * 16.0, rel=1e-5)
    value = discriminator_loss(discriminator, REAL, FAKE, HALF, gp_weight=0.0)
    assert float(value) == pytest.approx(cross_entropy, rel=1e-5)


def test_penalty_gradient_reaches_discriminator_weights():
    # For D(x) = x.w + b the penalty is (||w|| - 1)^2, whose gradient is
    # 2 (||w|| - 1) w / ||w|| = 2 * 4 * [3, 4] / 5 and zero for the bias.
    layer = keras.layers.Dense(1)
    layer.build((None, 2))
    layer.kernel.assign([[3.0], [4.0]])
    with tf.GradientTape() as tape:
        value = gradient_penalty(layer, REAL, FAKE, HALF)
    kernel_gradient, bias_gradient = tape.gradient(value, [layer.kernel, layer.bias])
    np.testing.assert_allclose(kernel_gradient.numpy(), [[4.8], [6.4]], rtol=1e-5)
    # The bias does not move the input gradient at all (TF reports it as unconnected).
    assert bias_gradient is None or np.allclose(bias_gradient.numpy(), 0.0)


def test_bad_inputs_raise():
    discriminator = linear_discriminator([3.0, 4.0])
    with pytest.raises(ValueError, match="same shape"):
        discriminator_loss(discriminator, REAL, FAKE[:2], HALF)
    with pytest.raises(ValueError, match=r"must have shape \[N, K\]"):
        gradient_penalty(discriminator, REAL[0], FAKE[0], HALF)
    with pytest.raises(ValueError, match="gp_weight must be >= 0, got -1"):
        discriminator_loss(discriminator, REAL, FAKE, HALF, gp_weight=-1)
    with pytest.raises(ValueError, match=r"logits must have shape \[N\] or \[N, 1\]"):
        generator_loss(np.ones((3, 2), "float32"))
