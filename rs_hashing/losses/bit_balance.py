"""Bit-balance loss of DUCH: each code should have as many +1 as -1 bits.

This is the form of the released DUCH code, `sum_i (sum_k h_ik)^2`: a penalty on each
code's own bit sum (METHOD.md: "each code pushed to have as many +1 as -1 bits"), here
as a mean, `(mean_k h_ik)^2` per code. It is not the other common "bit balance", which
asks each bit to be +1 for half of the batch; that one is a batch-level statistic and
could not be rescaled to the authors' weights.
"""

from __future__ import annotations

from typing import Any

from keras import ops


def bit_balance_loss(codes: Any) -> Any:
    """Per-code squared mean over bits, `(mean_k code_k)^2`.

    Pair weights (CHNR's noise detector) do not apply to this term: it regularises every
    code whatever its caption, so `CrossModalHashingModel` reduces it with a plain mean.

    Args:
        codes: continuous codes in (-1, 1), shape [N, K].

    Returns:
        Shape [N]; 0 for a perfectly balanced code, 1 for an all-equal binary code.

    Raises:
        ValueError: if `codes` is not rank 2.
    """
    codes = ops.convert_to_tensor(codes)
    if len(codes.shape) != 2:
        raise ValueError(
            f"bit_balance_loss: codes must have shape [N, K], got shape {codes.shape}."
        )
    return ops.square(ops.mean(codes, axis=1))
