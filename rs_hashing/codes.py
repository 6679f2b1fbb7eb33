"""Binary hash codes: the one sign rule and the one byte packing of the package.

A code is K values in {-1, +1} (int8), the sign of a hash head's continuous output with
sign(0) = +1, so that every bit is a valid bit. Packed, it is K/8 bytes, bit 0 of the
code in the most significant bit of byte 0 (`numpy.packbits(code > 0)`), the layout of
the Hamming index, the PostgreSQL archive, the SavedModel's `packed` output and the
ground-station runtime.

This module imports neither TensorFlow nor Keras at import time: the ground-station
runtime (`rs_hashing.edge`) uses it without them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


def binarize(values: Any) -> Any:
    """sign(values) with sign(0) = +1.

    NumPy arrays (and lists) give int8 +-1 NumPy arrays; tensors give a tensor of the
    input's dtype, for use inside graphs (training steps, exports).
    """
    if isinstance(values, (np.ndarray, np.generic, list, tuple)):
        return np.where(np.asarray(values) >= 0, 1, -1).astype(np.int8)
    from keras import ops  # pylint: disable=import-outside-toplevel

    values = ops.convert_to_tensor(values)
    return ops.where(values >= 0, ops.ones_like(values), -ops.ones_like(values))


def pack(codes: Any) -> np.ndarray:
    """+-1 (or any signed) codes [N, K] -> uint8 [N, K/8], most significant bit first."""
    return np.packbits(np.asarray(codes) > 0, axis=-1)


@dataclasses.dataclass(frozen=True)
class Codes:
    """Codes of N items under one model.

    Attributes:
        codes: int8 [N, K], values +-1.
        packed: uint8 [N, K/8], `pack(codes)`.
    """

    codes: np.ndarray
    packed: np.ndarray

    @classmethod
    def from_hash(cls, hash_values: Any) -> "Codes":
        """Codes of continuous hash outputs [N, K]."""
        codes = binarize(np.asarray(hash_values))
        return cls(codes, pack(codes))

    @property
    def bits(self) -> int:
        return int(self.codes.shape[1])

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def hex(self) -> list[str]:
        """Each code's packed bytes as a hex string (K/4 digits), as `edge-encode` prints."""
        return [row.tobytes().hex() for row in self.packed]
