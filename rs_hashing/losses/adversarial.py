"""Adversarial losses of DUCH: a code discriminator with a WGAN-GP style penalty.

The discriminator sees continuous hash codes and is trained with binary cross-entropy
to call text codes real (1) and image codes fake (0), plus a gradient penalty pulling
the norm of its input gradient towards 1 on random interpolations between paired real
and fake codes. The generator term then pushes the hashing net's codes to be called
real. All cross-entropies are computed from logits (`softplus`) rather than as
`-log(sigmoid(x))`, which is the same value but cannot overflow to inf.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf
from keras import ops

# Keeps the gradient norm differentiable where the gradient is exactly zero.
_NORM_EPSILON = 1e-12

Discriminator = Callable[[Any], Any]


def _as_logit_vector(logits: Any, caller: str) -> Any:
    """Accepts discriminator output [N] or [N, 1] and returns [N]."""
    logits = ops.convert_to_tensor(logits)
    if len(logits.shape) == 2 and logits.shape[1] == 1:
        return ops.squeeze(logits, axis=1)
    if len(logits.shape) != 1:
        raise ValueError(
            f"{caller}: discriminator logits must have shape [N] or [N, 1], got "
            f"{logits.shape}."
        )
    return logits


def _check_pair(real_codes: Any, fake_codes: Any, caller: str) -> None:
    if len(real_codes.shape) != 2 or len(fake_codes.shape) != 2:
        raise ValueError(
            f"{caller}: real and fake codes must have shape [N, K], got "
            f"{real_codes.shape} and {fake_codes.shape}."
        )
    for axis in (0, 1):
        dim_real, dim_fake = real_codes.shape[axis], fake_codes.shape[axis]
        if dim_real is not None and dim_fake is not None and dim_real != dim_fake:
            raise ValueError(
                f"{caller}: real and fake codes must have the same shape (they are "
                f"interpolated pairwise), got {real_codes.shape} and {fake_codes.shape}."
            )


def generator_loss(fake_logits: Any) -> Any:
    """Per-sample generator term `BCE(D(codes), 1) = softplus(-logit)`.

    Args:
        fake_logits: discriminator logits of the codes the hashing net should make look
            real, shape [N] or [N, 1].

    Returns:
        Shape [N].
    """
    return ops.softplus(-_as_logit_vector(fake_logits, "generator_loss"))


def gradient_penalty(
    discriminator: Discriminator, real_codes: Any, fake_codes: Any, interpolation: Any
) -> Any:
    """WGAN-GP penalty `mean_i((||grad_x D(x_hat_i)||_2 - 1)^2)`.

    Args:
        discriminator: callable mapping codes [N, K] to logits [N] or [N, 1].
        real_codes: shape [N, K].
        fake_codes: shape [N, K]; row i is interpolated with real_codes[i].
        interpolation: weights e in [0, 1], shape [N, 1] (one per pair, the WGAN-GP
            choice) or [N, K]; `x_hat = e * real + (1 - e) * fake`.

    Returns:
        A scalar. Differentiable with respect to the discriminator's variables (the
        input gradient is taken on a tape nested in the caller's).
    """
    real_codes = ops.convert_to_tensor(real_codes)
    fake_codes = ops.cast(ops.convert_to_tensor(fake_codes), real_codes.dtype)
    _check_pair(real_codes, fake_codes, "gradient_penalty")
    interpolation = ops.cast(ops.convert_to_tensor(interpolation), real_codes.dtype)
    # The penalty constrains the discriminator only; the codes are constants here.
    real_codes = ops.stop_gradient(real_codes)
    fake_codes = ops.stop_gradient(fake_codes)
    interpolated = interpolation * real_codes + (1.0 - interpolation) * fake_codes
    with tf.GradientTape() as input_tape:
        input_tape.watch(interpolated)
        logits = _as_logit_vector(discriminator(interpolated), "gradient_penalty")
        # Gradient of the sum = per-row input gradients (the authors' grad_outputs=ones).
        summed_logits = ops.sum(logits)
    input_gradients = input_tape.gradient(summed_logits, interpolated)
    gradient_norms = ops.sqrt(ops.sum(ops.square(input_gradients), axis=1) + _NORM_EPSILON)
    return ops.mean(ops.square(gradient_norms - 1.0))


def discriminator_loss(
    discriminator: Discriminator,
    real_codes: Any,
    fake_codes: Any,
    interpolation: Any,
    gp_weight: float = 10.0,
) -> Any:
    """Discriminator objective: BCE(real -> 1) + BCE(fake -> 0) + gp_weight * GP.

    Real and fake codes go through the discriminator in separate calls, as in the
    authors' code (a BatchNorm in training mode then normalises each set on its own).

    Args:
        discriminator: callable mapping codes [N, K] to logits [N] or [N, 1].
        real_codes: codes to be called real (text codes in DUCH), shape [N, K].
        fake_codes: codes to be called fake (image codes in DUCH), shape [N, K].
        interpolation: see `gradient_penalty`.
        gp_weight: non-negative weight of the gradient penalty (10 in DUCH).

    Returns:
        A scalar: each cross-entropy is a mean over the batch.

    Raises:
        ValueError: for a negative gp_weight or mismatched shapes.
    """
    if not gp_weight >= 0:
        raise ValueError(f"discriminator_loss: gp_weight must be >= 0, got {gp_weight!r}.")
    real_codes = ops.convert_to_tensor(real_codes)
    fake_codes = ops.cast(ops.convert_to_tensor(fake_codes), real_codes.dtype)
    _check_pair(real_codes, fake_codes, "discriminator_loss")
    real_codes = ops.stop_gradient(real_codes)
    fake_codes = ops.stop_gradient(fake_codes)
    real_logits = _as_logit_vector(discriminator(real_codes), "discriminator_loss")
    fake_logits = _as_logit_vector(discriminator(fake_codes), "discriminator_loss")
    cross_entropy = ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))
    if gp_weight == 0:
        return cross_entropy
    penalty = gradient_penalty(discriminator, real_codes, fake_codes, interpolation)
    return cross_entropy + gp_weight * penalty
