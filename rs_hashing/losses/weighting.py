"""The one place where per-sample weights are applied to per-sample loss values.

Every loss module in `rs_hashing.losses` returns one value per sample; the model reduces
them to a scalar here. CHNR's noise-detector weights reach the inter-modal contrastive
term through `weighted_mean`, so the normalisation happens exactly once: by the weights,
`sum(w * l) / sum(w)`, a mean whose scale does not depend on how many pairs the detector
trusts; or by the count, `sum(w * l) / N`, the authors' weighted sum on a mean scale.
"""

from __future__ import annotations

from typing import Any

from keras import ops


def _static_rank(tensor: Any) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def weighted_mean(per_sample: Any, weights: Any | None = None, normalize_by: str = "weights") -> Any:
    """Reduces per-sample loss values to a scalar, optionally weighted.

    Args:
        per_sample: loss values, shape [N].
        weights: non-negative sample weights, shape [N], or None for a plain mean.
        normalize_by: "weights" divides the weighted sum by sum(weights), "count" by N.

    Returns:
        A scalar: `sum(weights * per_sample) / sum(weights)` (or `/ N` with
        `normalize_by="count"`), or `mean(per_sample)` when `weights` is None. When the weights sum to zero (every pair judged noisy) the
        result is 0 with zero gradients, not NaN: such a batch simply teaches nothing.

    Raises:
        ValueError: if `per_sample` or `weights` is not rank 1, or their lengths differ
            (checked where the shapes are known statically).
    """
    per_sample = ops.convert_to_tensor(per_sample)
    rank = _static_rank(per_sample)
    if rank != 1:
        raise ValueError(
            f"weighted_mean: per_sample must have shape [N], got shape {per_sample.shape}."
        )
    if normalize_by not in ("weights", "count"):
        raise ValueError(f"weighted_mean: normalize_by must be 'weights' or 'count', got {normalize_by!r}.")
    if weights is None:
        return ops.mean(per_sample)
    weights = ops.cast(ops.convert_to_tensor(weights), per_sample.dtype)
    if _static_rank(weights) != 1:
        raise ValueError(
            f"weighted_mean: weights must have shape [N], got shape {weights.shape}."
        )
    n_values, n_weights = per_sample.shape[0], weights.shape[0]
    if n_values is not None and n_weights is not None and n_values != n_weights:
        raise ValueError(
            f"weighted_mean: weights have length {n_weights} but per_sample has length "
            f"{n_values}; there must be one weight per sample."
        )
    if normalize_by == "count":
        return ops.mean(weights * per_sample)
    total_weight = ops.sum(weights)
    has_weight = total_weight > 0
    # Divide by a safe denominator and select afterwards, so the zero-sum branch has a
    # finite value and zero (not NaN) gradients.
    safe_total = ops.where(has_weight, total_weight, ops.ones_like(total_weight))
    weighted = ops.sum(weights * per_sample) / safe_total
    return ops.where(has_weight, weighted, ops.zeros_like(weighted))
