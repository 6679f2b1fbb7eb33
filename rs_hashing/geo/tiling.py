"""One pass of a tiler over scenes: the tiles, lazily, and the counts of what was skipped."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from rs_hashing.geo.tiling_report import TilingReport


class Tiling:
    """The tiles of some scenes (iterate once), and `report`, the counts so far.

    Made by `Tiler.tiles`; scenes are opened one after another as iteration reaches them,
    and each is closed before the next is opened.
    """

    def __init__(self, scene_tiles: Callable[..., Iterator], scenes: Iterable):
        self._scene_tiles = scene_tiles
        self._scenes = scenes
        self._counts = {"scenes": 0, "tiles": 0, "skipped_nodata": 0, "skipped_edge": 0}
        self._started = False

    def __iter__(self) -> Iterator:
        if self._started:
            raise RuntimeError("Tiling: a tiling can be iterated once; call Tiler.tiles again")
        self._started = True
        for scene in self._scenes:
            self._counts["scenes"] += 1
            scene_counts = {"tiles": 0, "skipped_nodata": 0, "skipped_edge": 0}
            try:
                yield from self._scene_tiles(scene, scene_counts)
            finally:
                for key, value in scene_counts.items():
                    self._counts[key] += value

    @property
    def report(self) -> TilingReport:
        """The counts of the scenes tiled so far (complete once iteration has ended)."""
        return TilingReport(**self._counts)
