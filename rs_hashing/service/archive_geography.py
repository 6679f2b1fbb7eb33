"""Footprints and acquisition times of an index's items, to filter a search of the
in-memory (faiss) index by a lon/lat box and a time range, as the PostgreSQL archive
does in SQL."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import shapely
import shapely.geometry

from rs_hashing.index.hamming_index import HammingIndex
from rs_hashing.service.request_error import RequestError
from rs_hashing.service.search_filter import SearchFilter

# Items whose metadata is read at once while the table is built (bounds the copies).
_CHUNK = 100_000


def _utc_microseconds(value: datetime) -> np.datetime64:
    return np.datetime64(value.astimezone(timezone.utc).replace(tzinfo=None), "us")


def _footprint(item: dict[str, Any]) -> shapely.Geometry | None:
    geojson = item.get("footprint")
    if not geojson:
        return None
    try:
        geometry = shapely.geometry.shape(geojson)
    except (KeyError, IndexError, TypeError, ValueError, shapely.errors.ShapelyError):
        return None
    return None if geometry.is_empty else geometry


def _acquired(item: dict[str, Any]) -> np.datetime64:
    value = item.get("acquired")
    if not isinstance(value, str):
        return np.datetime64("NaT", "us")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return np.datetime64("NaT", "us")
    if parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return _utc_microseconds(parsed)


class ArchiveGeography:
    """Which items of an archive pass a `SearchFilter`.

    Args:
        ids: the items' ids, increasing (int64 [N]).
        footprints: each item's footprint in lon/lat (None where it has none).
        times: each item's acquisition time, UTC datetime64[us] [N] (NaT where none).

    Items without a footprint (or time) never pass a box (or time) filter, as in the
    PostgreSQL archive; footprints are planar in lon/lat.
    """

    def __init__(self, ids: np.ndarray, footprints: list[shapely.Geometry | None], times: np.ndarray):
        if not len(ids) == len(footprints) == len(times):
            raise ValueError(f"{len(ids)} ids, {len(footprints)} footprints and {len(times)} times "
                             "must be as many")
        self.ids = np.asarray(ids, np.int64)
        self._rows = np.array([row for row, geometry in enumerate(footprints) if geometry is not None],
                              np.int64)
        self._tree = shapely.STRtree([footprints[row] for row in self._rows]) if len(self._rows) else None
        self._times = np.asarray(times, "datetime64[us]")

    @classmethod
    def from_index(cls, index: HammingIndex) -> "ArchiveGeography":
        """Reads every item's "footprint" (GeoJSON) and "acquired" (ISO 8601) metadata."""
        ids = index.ids()
        footprints: list[shapely.Geometry | None] = []
        times = np.empty(len(ids), "datetime64[us]")
        for start in range(0, len(ids), _CHUNK):
            items = index.metadata(ids[start:start + _CHUNK])
            footprints.extend(_footprint(item) for item in items)
            times[start:start + len(items)] = [_acquired(item) for item in items]
        return cls(ids, footprints, times)

    @property
    def has_footprints(self) -> bool:
        return self._tree is not None

    @property
    def has_times(self) -> bool:
        return bool(np.any(~np.isnat(self._times)))

    def matching_ids(self, search_filter: SearchFilter) -> np.ndarray:
        """The ids (increasing) of the items that pass the filter.

        Raises:
            RequestError: 400 for a box filter on an archive without footprints, or a
                time filter on one without acquisition times (no item could pass).
        """
        keep = np.ones(len(self.ids), bool)
        if search_filter.bbox is not None:
            if not self.has_footprints:
                raise RequestError(400, "this archive's items have no footprints, so bbox cannot "
                                        "filter them (index scenes with `rs-hashing index --scenes`)")
            inside = np.zeros(len(self.ids), bool)
            touching = self._tree.query(shapely.box(*search_filter.bbox), predicate="intersects")
            inside[self._rows[touching]] = True
            keep &= inside
        if search_filter.after is not None or search_filter.before is not None:
            if not self.has_times:
                raise RequestError(400, "this archive's items have no acquisition times, so "
                                        "after/before cannot filter them")
            known = ~np.isnat(self._times)
            keep &= known
            if search_filter.after is not None:
                keep &= known & (self._times >= _utc_microseconds(search_filter.after))
            if search_filter.before is not None:
                keep &= known & (self._times <= _utc_microseconds(search_filter.before))
        return self.ids[keep]
