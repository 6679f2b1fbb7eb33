"""NT-Xent, the contrastive loss of DUCH (SimCLR form), one value per item.

For two views `a` and `b` of N items the 2N rows `[a; b]` are L2-normalised; row r's
logits are its cosine similarities to every row divided by the temperature; its positive
is its counterpart (a_i <-> b_i) and its denominator runs over the 2N - 1 OTHER rows
(the positive included, itself excluded). The self-similarity is removed by masking it
out of the log-sum-exp, which is exact for any temperature. (The released DUCH code
subtracted e from the row sum instead, which is right only at temperature 1.)
"""

from __future__ import annotations

from typing import Any

from keras import ops

# Keeps the normalisation finite for an all-zero code (tanh codes can be exactly zero at
# initialisation in tests); real codes have norms far above this.
_NORM_EPSILON = 1e-12


def _l2_normalize(rows: Any) -> Any:
    squared_norm = ops.sum(ops.square(rows), axis=1, keepdims=True)
    return rows * ops.rsqrt(ops.maximum(squared_norm, _NORM_EPSILON))


def nt_xent_loss(view_a: Any, view_b: Any, temperature: float = 1.0) -> Any:
    """Per-item NT-Xent loss between two views.

    Args:
        view_a: first view, shape [N, D] (e.g. image codes).
        view_b: second view, shape [N, D] (e.g. text codes); row i pairs with view_a[i].
        temperature: positive float dividing the cosine similarities. The DUCH authors
            used 1.0.

    Returns:
        Shape [N]: for item i, `(l(a_i) + l(b_i)) / 2`, the mean of its two rows' losses,
        where `l(r) = -log(exp(s(r, r+)/t) / sum_{q != r} exp(s(r, q)/t))`. The plain
        mean of the result is therefore the usual mean over the 2N rows.

    Raises:
        ValueError: if the temperature is not positive, a view is not rank 2, or the
            views' static shapes differ.
    """
    if not temperature > 0:
        raise ValueError(f"nt_xent_loss: temperature must be > 0, got {temperature!r}.")
    view_a = ops.convert_to_tensor(view_a)
    view_b = ops.convert_to_tensor(view_b)
    for name, view in (("view_a", view_a), ("view_b", view_b)):
        if len(view.shape) != 2:
            raise ValueError(
                f"nt_xent_loss: {name} must have shape [N, D], got shape {view.shape}."
            )
    for axis in (0, 1):
        dim_a, dim_b = view_a.shape[axis], view_b.shape[axis]
        if dim_a is not None and dim_b is not None and dim_a != dim_b:
            raise ValueError(
                "nt_xent_loss: the two views must have the same shape, got "
                f"{view_a.shape} and {view_b.shape}."
            )
    view_b = ops.cast(view_b, view_a.dtype)

    rows_a = _l2_normalize(view_a)
    rows_b = _l2_normalize(view_b)
    rows = ops.concatenate([rows_a, rows_b], axis=0)  # [2N, D]
    logits = ops.matmul(rows, ops.transpose(rows)) / temperature  # [2N, 2N]
    # -inf on the diagonal drops each row's similarity to itself from the denominator
    # (exp(-inf) = 0); the gradient of the masked entries is exactly zero.
    self_mask = ops.eye(ops.shape(rows)[0], dtype="bool")
    logits = ops.where(self_mask, ops.full_like(logits, float("-inf")), logits)
    log_denominator = ops.logsumexp(logits, axis=1)  # [2N]

    positive_logits = ops.sum(rows_a * rows_b, axis=1) / temperature  # [N]
    num_items = ops.shape(view_a)[0]
    loss_rows_a = log_denominator[:num_items] - positive_logits
    loss_rows_b = log_denominator[num_items:] - positive_logits
    return (loss_rows_a + loss_rows_b) / 2.0
