"""The radiometric contract: how source pixels become the encoder's uint8 R, G, B input.

Every source pixel value v of band b (uint8 or uint16, after band selection: exactly the
three bands R, G, B, channels last) becomes

    clip(rint((v - low[b]) * (255 / (high[b] - low[b]))), 0, 255)   as uint8,

computed in float32: v and low[b] are cast to float32, the scale 255 / (high - low) is
one float32 number per band, `rint` rounds halves to even. `apply` (NumPy) and
`tf_apply` (TensorFlow ops, for use inside a SavedModel graph) perform exactly these
float32 operations in this order, so both give the same bytes.

Where low/high come from (`mode`):
  * `fixed` (default): (0, 255) for uint8 sources, which is the identity, and
    `range16` for 16-bit sources, default (0, 3000): surface reflectance x 10000 as
    Sentinel-2 L2A and Landsat Collection 2 scale it, so a reflectance of 0.3 maps to 255.
  * `percentile`: per scene and per band, the `percentiles` (default p2, p98) of the
    scene's valid (non-nodata) pixels, estimated from a decimated read of at most
    `max_sample_pixels` pixels (`resolved_from_sample`). The resolved low/high are
    recorded in every tile's metadata (`to_dict`), so that a tile can be reproduced.

A band whose high equals its low (a constant band) gets high = low + 1.

This module imports only NumPy at import time: the ground-station runtime uses it
without TensorFlow (`tf_apply` imports TensorFlow when called).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

MODES = ("fixed", "percentile")
SOURCE_DTYPES = ("uint8", "uint16")
UINT8_RANGE = (0.0, 255.0)


def _float32(value: float) -> float:
    """`value` as the nearest float32, as a Python float: what the arithmetic uses."""
    return float(np.float32(value))


def _triple(name: str, values: Any) -> tuple[float, float, float]:
    values = tuple(float(value) for value in np.atleast_1d(np.asarray(values, np.float64)))
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(value) for value in values):
        raise ValueError(f"Radiometry: {name} must be 3 finite numbers (R, G, B), got {values}")
    return tuple(_float32(value) for value in values)


@dataclasses.dataclass(frozen=True)
class Radiometry:
    """Source pixels -> uint8 [H, W, 3] for the encoder (see the module docstring).

    Attributes:
        mode: "fixed" or "percentile".
        range16: (low, high) of the fixed mode for 16-bit sources.
        percentiles: (lower, upper) percentiles of the percentile mode, in [0, 100].
        max_sample_pixels: the most pixels the percentile mode reads from one scene.
        low, high: the resolved per-band (R, G, B) ranges, float32 values; None until
            resolved. `apply` and `tf_apply` resolve an unresolved fixed contract from
            the input's dtype; a percentile contract must be resolved from a scene first.
    """

    mode: str = "fixed"
    range16: tuple[float, float] = (0.0, 3000.0)
    percentiles: tuple[float, float] = (2.0, 98.0)
    max_sample_pixels: int = 250_000
    low: tuple[float, float, float] | None = None
    high: tuple[float, float, float] | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Radiometry: mode must be one of {MODES}, got {self.mode!r}")
        range16 = tuple(float(value) for value in self.range16)
        if len(range16) != 2 or not range16[0] < range16[1]:
            raise ValueError(f"Radiometry: range16 must be (low, high) with low < high, got {self.range16}")
        object.__setattr__(self, "range16", range16)
        percentiles = tuple(float(value) for value in self.percentiles)
        if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise ValueError("Radiometry: percentiles must be (lower, upper) with "
                             f"0 <= lower < upper <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", percentiles)
        if int(self.max_sample_pixels) < 1000:
            raise ValueError(f"Radiometry: max_sample_pixels must be at least 1000, got {self.max_sample_pixels}")
        object.__setattr__(self, "max_sample_pixels", int(self.max_sample_pixels))
        if (self.low is None) != (self.high is None):
            raise ValueError("Radiometry: low and high must be given together")
        if self.low is not None:
            low, high = _triple("low", self.low), _triple("high", self.high)
            high = tuple(h if h > l else _float32(l + 1.0) for l, h in zip(low, high))
            object.__setattr__(self, "low", low)
            object.__setattr__(self, "high", high)

    # ------------------------------------------------------------------ resolving
    @property
    def resolved(self) -> bool:
        return self.low is not None

    def resolved_for_dtype(self, dtype: Any) -> "Radiometry":
        """The fixed contract for sources of `dtype` (uint8: identity; uint16: range16).

        A contract that is already resolved is returned as it is.

        Raises:
            ValueError: an unsupported dtype, or an unresolved percentile contract.
        """
        if self.resolved:
            return self
        if self.mode != "fixed":
            raise ValueError("Radiometry: a percentile contract must be resolved from a scene "
                             "(resolved_from_sample) before it can be applied")
        name = _dtype_name(dtype)
        low, high = UINT8_RANGE if name == "uint8" else self.range16
        return dataclasses.replace(self, low=(low,) * 3, high=(high,) * 3)

    def resolved_from_sample(self, pixels: np.ndarray, valid: np.ndarray) -> "Radiometry":
        """The contract for one scene, given a decimated sample of it.

        Args:
            pixels: the sample, [h, w, 3] (or [N, 3]) of the scene's dtype.
            valid: bool [h, w] (or [N]), True where the pixel is not nodata.

        Fixed mode ignores the sample's values (only its dtype counts). Percentile mode
        takes the per-band percentiles of the valid pixels (NumPy's default linear
        interpolation), rounded to float32.

        Raises:
            ValueError: an unsupported dtype, or no valid pixel in the sample.
        """
        pixels = np.asarray(pixels)
        _dtype_name(pixels.dtype)
        if self.mode == "fixed":
            return dataclasses.replace(self, low=None, high=None).resolved_for_dtype(pixels.dtype)
        values = pixels.reshape(-1, 3)[np.asarray(valid, bool).reshape(-1)]
        if not len(values):
            raise ValueError("Radiometry: no valid (non-nodata) pixel to take percentiles of")
        low, high = np.percentile(values, self.percentiles, axis=0)
        return dataclasses.replace(self, low=tuple(low), high=tuple(high))

    def _scale_and_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 [3] low and float32 [3] scale = 255 / (high - low), both in float32."""
        low = np.asarray(self.low, np.float32)
        high = np.asarray(self.high, np.float32)
        return low, np.float32(255.0) / (high - low)

    # ------------------------------------------------------------------ applying
    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 or uint16 [..., 3] (channels last) -> uint8 [..., 3], in NumPy.

        Raises:
            ValueError: another dtype, or a last axis that is not 3.
        """
        pixels = np.asarray(pixels)
        _check_channels(pixels.shape)
        contract = self.resolved_for_dtype(pixels.dtype)
        low, scale = contract._scale_and_offset()  # pylint: disable=protected-access
        # In place, one float32 buffer: the same operations as (v - low) * scale, rint, clip.
        values = pixels.astype(np.float32)
        values -= low
        values *= scale
        np.rint(values, out=values)
        np.clip(values, np.float32(0.0), np.float32(255.0), out=values)
        return values.astype(np.uint8)

    def tf_apply(self, pixels: Any) -> Any:
        """`apply` with TensorFlow ops, for a graph: uint8/uint16 tensor [..., 3] -> uint8.

        The same float32 arithmetic in the same order (cast, subtract low, multiply by
        the float32 scale, `tf.math.rint`, `tf.clip_by_value`, cast), so the bytes equal
        `apply`'s.
        """
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        pixels = tf.convert_to_tensor(pixels)
        if pixels.shape.rank is not None and pixels.shape[-1] is not None:  # Unknown in some graphs.
            _check_channels(tuple(pixels.shape))
        contract = self.resolved_for_dtype(pixels.dtype.name)
        low, scale = contract._scale_and_offset()  # pylint: disable=protected-access
        values = (tf.cast(pixels, tf.float32) - tf.constant(low)) * tf.constant(scale)
        return tf.cast(tf.clip_by_value(tf.math.rint(values), 0.0, 255.0), tf.uint8)

    # ------------------------------------------------------------------ records
    def to_dict(self) -> dict:
        """A JSON-ready record of the whole contract (low/high as lists, or None)."""
        record = dataclasses.asdict(self)
        for key in ("range16", "percentiles", "low", "high"):
            if record[key] is not None:
                record[key] = list(record[key])
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "Radiometry":
        """The contract `to_dict` recorded.

        Raises:
            ValueError: keys that are not fields of the contract, named.
        """
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(record) - fields)
        if unknown:
            raise ValueError(f"Radiometry: unknown keys {unknown}; known: {sorted(fields)}")
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in record.items()}
        return cls(**values)


def _dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", None) or np.dtype(dtype).name
    if name not in SOURCE_DTYPES:
        raise ValueError(f"Radiometry: source pixels must be one of {SOURCE_DTYPES}, got {name}")
    return name


def _check_channels(shape: tuple) -> None:
    if not shape or shape[-1] != 3:
        raise ValueError(f"Radiometry: pixels must be [..., 3] (R, G, B channels last), got shape {shape}")
