"""Windowed and decimated reads of one open scene, a window at a time.

    with SceneReader(scene) as reader:
        pixels, valid = reader.read((col_off, row_off, width, height))  # [h, w, 3], [h, w]
        sample, sample_valid = reader.read_decimated(250_000)

Each file of the scene is opened once. A file on another grid than the scene's (a
coarser band) is read through a `WarpedVRT` onto the scene grid, nearest neighbour, so
that a window means the same pixels in every band. Nothing is read whole: `read` asks
GDAL for one window, `read_decimated` for a small `out_shape` (GDAL takes it from the
overviews where the file has them).
"""

from __future__ import annotations

import math

import numpy as np
import rasterio
import rasterio.windows
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from rs_hashing.geo.scene import Scene
from rs_hashing.geo.scene_error import SceneError


class SceneReader:
    """The open files of one scene (a context manager; `close` releases them)."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self._datasets = {}
        self._handles = []
        try:
            for path in scene.unique_sources:
                dataset = rasterio.open(path)
                self._handles.append(dataset)
                if (dataset.transform, dataset.width, dataset.height) != (scene.transform, scene.width, scene.height):
                    dataset = WarpedVRT(dataset, crs=dataset.crs, transform=scene.transform, width=scene.width,
                                        height=scene.height, resampling=Resampling.nearest)
                    self._handles.append(dataset)
                self._datasets[path] = dataset
        except rasterio.errors.RasterioIOError as error:
            self.close()
            raise SceneError(f"{path}: cannot be opened any more ({error})") from error

    def __enter__(self) -> "SceneReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for dataset in reversed(self._handles):
            dataset.close()
        self._handles, self._datasets = [], {}

    def _read(self, **read_args) -> np.ndarray:
        """[h, w, 3] of the scene's R, G, B bands; one read call per file."""
        planes = [None] * 3
        for path, dataset in self._datasets.items():
            positions = [i for i, source in enumerate(self.scene.sources) if source == path]
            indexes = [self.scene.band_indexes[i] for i in positions]
            out_shape = read_args.get("out_shape")
            arguments = dict(read_args, out_shape=(len(indexes),) + out_shape) if out_shape else read_args
            data = dataset.read(indexes=indexes, **arguments)
            for position, plane in zip(positions, data):
                planes[position] = plane
        return np.stack(planes, axis=-1)

    def read(self, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The pixels [height, width, 3] (the scene's dtype) of a window
        (col_off, row_off, width, height) inside the scene, and its valid mask [height, width]."""
        col_off, row_off, width, height = window
        if col_off < 0 or row_off < 0 or col_off + width > self.scene.width or row_off + height > self.scene.height:
            raise ValueError(f"{self.scene.scene_id}: window {window} is not inside the "
                             f"{self.scene.width} x {self.scene.height} scene")
        pixels = self._read(window=rasterio.windows.Window(col_off, row_off, width, height))
        return pixels, self.scene.valid_mask(pixels)

    def read_decimated(self, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene decimated by one integer factor to at most `max_pixels` pixels
        (nearest neighbour, so nodata stays nodata), [h, w, 3], and its valid mask."""
        factor = max(1, math.ceil(math.sqrt(self.scene.width * self.scene.height / max_pixels)))
        shape = (max(1, self.scene.height // factor), max(1, self.scene.width // factor))
        pixels = self._read(out_shape=shape, resampling=Resampling.nearest)
        return pixels, self.scene.valid_mask(pixels)
