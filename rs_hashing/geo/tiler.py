"""Cuts scenes into encoder-ready tiles with geography, one window at a time.

    scenes = Scene.discover("items.json", bands=("B04", "B03", "B02"))
    tiling = Tiler(size=256, stride=256).tiles(scenes)
    for tile in tiling:
        tile.pixels          # uint8 [256, 256, 3] after the radiometric contract
        tile.metadata()      # scene_id, window, bounds, crs, footprint (EPSG:4326), ...
    print(tiling.report)     # scenes, tiles yielded, skipped for nodata, partial edge tiles

The grid. Tiles start at column and row offsets 0, stride, 2 * stride, ... of each scene
and are `size` x `size` pixels. A tile that would reach past the right or bottom edge is
skipped and counted (`skipped_edge`): per axis, ceil(W / stride) positions start inside
the scene, of which (W - size) // stride + 1 hold a whole tile (none if W < size).

Metres. With `unit="m"`, size and stride are metres, turned into pixels per scene with
the scene's pixel size and rounded to the nearest pixel (halves up), at least 1: 2560 m
on 10 m pixels is 256 px; 1000 m on 30 m pixels is 33.3 -> 33 px (990 m). A tile's
window and bounds give the extent it really covers. Pixels must be square.

Nodata. A tile whose share of valid pixels (`Scene.valid_mask`: with a nodata value, no
band equals it; without one, not all three bands zero) is below `min_valid` is skipped
and counted (`skipped_nodata`). The nodata pixels of a tile that is kept go through the
radiometric contract like any other.

Memory. One window is read at a time (rows of tiles top to bottom, left to right within
a row), and GDAL's block cache is capped at `gdal_cache_mb` while tiling, so memory does
not grow with the scene: a 10980 x 10980 scene is never read whole. In percentile mode a
decimated read of at most `radiometry.max_sample_pixels` pixels comes first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator

import rasterio

from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.scene_reader import SceneReader
from rs_hashing.geo.tile import Tile
from rs_hashing.geo.tiling import Tiling

UNITS = ("px", "m")


@dataclasses.dataclass(frozen=True)
class Tiler:
    """How scenes become tiles (see the module docstring).

    Attributes:
        size: the tile size, in `unit`s.
        stride: the step between tiles, in `unit`s; `size` if None (no overlap).
        unit: "px" (pixels) or "m" (metres, rounded per scene to the nearest pixel).
        min_valid: tiles with a smaller share of valid pixels are skipped, in [0, 1].
        radiometry: the radiometric contract; a percentile contract is resolved per scene.
        densify: points per footprint edge before projecting to EPSG:4326.
        gdal_cache_mb: GDAL's block cache cap while tiling, in MiB.
    """

    size: float = 256
    stride: float | None = None
    unit: str = "px"
    min_valid: float = 0.5
    radiometry: Radiometry = Radiometry()
    densify: int = 5
    gdal_cache_mb: int = 256

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"Tiler: unit must be one of {UNITS}, got {self.unit!r}")
        stride = self.size if self.stride is None else self.stride
        for name, value in (("size", self.size), ("stride", stride)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"Tiler: {name} must be a positive number, got {value!r}")
            if self.unit == "px" and value != int(value):
                raise ValueError(f"Tiler: {name} in pixels must be a whole number, got {value!r}")
        object.__setattr__(self, "stride", stride)
        if not 0.0 <= self.min_valid <= 1.0:
            raise ValueError(f"Tiler: min_valid must be in [0, 1], got {self.min_valid}")
        if not isinstance(self.radiometry, Radiometry):
            raise ValueError(f"Tiler: radiometry must be a Radiometry, got {type(self.radiometry).__name__}")
        if int(self.densify) < 2 or int(self.gdal_cache_mb) < 8:
            raise ValueError(f"Tiler: densify must be >= 2 and gdal_cache_mb >= 8, got {self.densify}, "
                             f"{self.gdal_cache_mb}")

    # ------------------------------------------------------------------ the grid
    def pixel_grid(self, scene: Scene) -> tuple[int, int]:
        """(size, stride) in pixels of `scene`.

        Raises:
            ValueError: metres on a scene with non-square pixels, naming the scene.
        """
        if self.unit == "px":
            return int(self.size), int(self.stride)
        x_size, y_size = scene.resolution
        if not math.isclose(x_size, y_size, rel_tol=1e-6):
            raise ValueError(f"{scene.sources[0]}: pixels are {x_size} x {y_size}, not square; "
                             "give the tile size and stride in pixels")
        return tuple(max(1, math.floor(value / x_size + 0.5)) for value in (self.size, self.stride))

    def windows(self, scene: Scene) -> tuple[list[tuple[int, int, int, int]], int]:
        """The whole-tile windows (col_off, row_off, width, height) of `scene`, rows top
        to bottom, and the number of partial edge positions skipped."""
        size, stride = self.pixel_grid(scene)

        def offsets(length: int) -> tuple[list[int], int]:
            whole = list(range(0, length - size + 1, stride))
            return whole, math.ceil(length / stride)

        columns, column_positions = offsets(scene.width)
        rows, row_positions = offsets(scene.height)
        skipped_edge = column_positions * row_positions - len(columns) * len(rows)
        return [(col, row, size, size) for row in rows for col in columns], skipped_edge

    def radiometry_for(self, scene: Scene, reader: SceneReader) -> Radiometry:
        """The contract resolved for `scene` (percentile mode reads a decimated sample)."""
        if self.radiometry.mode == "fixed":
            return self.radiometry.resolved_for_dtype(scene.dtype)
        sample, valid = reader.read_decimated(self.radiometry.max_sample_pixels)
        try:
            return self.radiometry.resolved_from_sample(sample, valid)
        except ValueError as error:
            raise ValueError(f"{scene.sources[0]}: scene {scene.scene_id}: {error}") from error

    # ------------------------------------------------------------------ tiling
    def tiles(self, scenes: Scene | Iterable[Scene]) -> Tiling:
        """The tiles of `scenes`, lazily; iterate once, then read `.report`."""
        scenes = [scenes] if isinstance(scenes, Scene) else scenes
        return Tiling(self._scene_tiles, scenes)

    def _scene_tiles(self, scene: Scene, counts: dict) -> Iterator[Tile]:
        windows, counts["skipped_edge"] = self.windows(scene)
        with rasterio.Env(GDAL_CACHEMAX=int(self.gdal_cache_mb) * 2**20), SceneReader(scene) as reader:
            contract = self.radiometry_for(scene, reader)
            record = contract.to_dict()
            sources = scene.unique_sources
            for window in windows:
                pixels, valid = reader.read(window)
                valid_fraction = float(valid.mean())
                if valid_fraction < self.min_valid:
                    counts["skipped_nodata"] += 1
                    continue
                bounds = scene.window_bounds(window)
                counts["tiles"] += 1
                yield Tile(pixels=contract.apply(pixels), scene_id=scene.scene_id, sources=sources,
                           window=window, acquired=scene.acquired, bounds=bounds, crs=scene.crs,
                           footprint=scene.footprint(bounds, self.densify), valid_fraction=valid_fraction,
                           radiometry=record)
