"""Quantisation loss of DUCH: how far each continuous code is from its binary target."""

from __future__ import annotations

from typing import Any

from keras import ops


def quantization_loss(codes: Any, binary_targets: Any) -> Any:
    """Per-sample mean over bits of `(code - target)^2`.

    Args:
        codes: continuous codes in (-1, 1), shape [N, K].
        binary_targets: the samples' +-1 targets B, shape [N, K]. Treated as constants:
            DUCH recomputes B between epochs, it is never trained by gradient.

    Returns:
        Shape [N]. A mean over bits (the authors summed), so the weight of this term does
        not depend on the code length; see `CrossModalHashingModel` for the rescaled
        weight.

    Raises:
        ValueError: if either input is not rank 2 or their static shapes differ.
    """
    codes = ops.convert_to_tensor(codes)
    binary_targets = ops.convert_to_tensor(binary_targets)
    if len(codes.shape) != 2 or len(binary_targets.shape) != 2:
        raise ValueError(
            "quantization_loss: codes and binary_targets must have shape [N, K], got "
            f"{codes.shape} and {binary_targets.shape}."
        )
    for axis in (0, 1):
        dim_codes, dim_targets = codes.shape[axis], binary_targets.shape[axis]
        if dim_codes is not None and dim_targets is not None and dim_codes != dim_targets:
            raise ValueError(
                "quantization_loss: codes and binary_targets must have the same shape, "
                f"got {codes.shape} and {binary_targets.shape}."
            )
    binary_targets = ops.stop_gradient(ops.cast(binary_targets, codes.dtype))
    return ops.mean(ops.square(codes - binary_targets), axis=1)
