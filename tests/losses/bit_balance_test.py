"""Tests for rs_hashing.losses.bit_balance."""

import numpy as np
import pytest

from rs_hashing.losses.bit_balance import bit_balance_loss


def test_hand_values():
    codes = np.array(
        [[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.0, 0.0], [-1, -1, -1, 1]],
        "float32",
    )
    # (mean over bits)^2: balanced 0, all +1 -> 1, (1/4)^2, (-1/2)^2.
    np.testing.assert_allclose(np.asarray(bit_balance_loss(codes)), [0.0, 1.0, 0.0625, 0.25])


def test_bad_shape_raises():
    with pytest.raises(ValueError, match=r"must have shape \[N, K\], got shape \(8,\)"):
        bit_balance_loss(np.ones(8, "float32"))
