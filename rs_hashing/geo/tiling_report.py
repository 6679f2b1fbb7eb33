"""What one tiling run yielded and skipped."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TilingReport:
    """Counts of one tiling run (`Tiling.report`), over every scene tiled so far.

    Attributes:
        scenes: scenes started.
        tiles: tiles yielded.
        skipped_nodata: full tiles whose valid fraction was below the tiler's `min_valid`.
        skipped_edge: grid positions at the right and bottom edges whose tile would
            reach past the scene (partial tiles are never yielded).
    """

    scenes: int = 0
    tiles: int = 0
    skipped_nodata: int = 0
    skipped_edge: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (f"{self.scenes} scene(s): {self.tiles} tiles yielded, {self.skipped_nodata} skipped for "
                f"nodata, {self.skipped_edge} partial edge tiles skipped")
