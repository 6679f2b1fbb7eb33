"""Where and when hits may lie: a lon/lat box and an acquisition-time range."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone
from typing import Any

from rs_hashing.service.request_error import RequestError

_BBOX_NAMES = ("min_lon", "min_lat", "max_lon", "max_lat")


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _parse_time(value: str, name: str) -> datetime:
    """An ISO 8601 time ('2021-05-03', '2021-05-03T10:42:00Z', ...) as aware UTC; a time
    without an offset is UTC, as in the PostgreSQL archive."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RequestError(400, f"{name}={_short(value)!r} is not an ISO 8601 time "
                                "(e.g. 2021-05-03 or 2021-05-03T10:42:00Z)") from None
    if parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        raise RequestError(400, f"{name}={_short(value)!r} lies outside the years 1 to 9999 "
                                "in UTC") from None


@dataclasses.dataclass(frozen=True)
class SearchFilter:
    """A request's filter; every part is optional (an empty filter keeps every item).

    Attributes:
        bbox: (min_lon, min_lat, max_lon, max_lat) in EPSG:4326; keeps items whose
            footprint intersects it.
        after, before: keep items acquired at or after / at or before these times.
    """

    bbox: tuple[float, float, float, float] | None = None
    after: datetime | None = None
    before: datetime | None = None

    @classmethod
    def parse(cls, bbox: str | None = None, after: str | None = None,
              before: str | None = None) -> "SearchFilter":
        """The filter of query parameters: bbox as 'min_lon,min_lat,max_lon,max_lat',
        after/before as ISO 8601 times; blank values are absent.

        Raises:
            RequestError: 400 naming the malformed value.
        """
        box = None
        if bbox is not None and bbox.strip():
            parts = [part.strip() for part in bbox.split(",")]
            if len(parts) != 4:
                raise RequestError(400, f"bbox={_short(bbox)!r} must be four numbers "
                                        "min_lon,min_lat,max_lon,max_lat")
            values = []
            for name, part in zip(_BBOX_NAMES, parts):
                try:
                    value = float(part)
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise RequestError(400, f"bbox {name}={_short(part)!r} is not a finite number")
                values.append(value)
            for name, value, limit in zip(_BBOX_NAMES, values, (180, 90, 180, 90)):
                if abs(value) > limit:
                    raise RequestError(400, f"bbox {name}={value:g} lies outside "
                                            f"[-{limit}, {limit}] (bbox is lon/lat, EPSG:4326)")
            if values[0] > values[2] or values[1] > values[3]:
                raise RequestError(400, f"bbox={_short(bbox)!r} has min > max (a box across the "
                                        "antimeridian is two queries)")
            box = tuple(values)
        start = _parse_time(after, "after") if after is not None and after.strip() else None
        end = _parse_time(before, "before") if before is not None and before.strip() else None
        if start is not None and end is not None and start > end:
            raise RequestError(400, f"after={after!r} is later than before={before!r}")
        return cls(box, start, end)

    @property
    def empty(self) -> bool:
        return self.bbox is None and self.after is None and self.before is None

    def describe(self) -> dict[str, Any]:
        """The filter as JSON values (absent parts left out)."""
        described: dict[str, Any] = {}
        if self.bbox is not None:
            described["bbox"] = list(self.bbox)
        if self.after is not None:
            described["after"] = self.after.isoformat()
        if self.before is not None:
            described["before"] = self.before.isoformat()
        return described
