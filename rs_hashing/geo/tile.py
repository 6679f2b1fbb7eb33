"""One encoder-ready tile of a scene and where on Earth it lies."""

from __future__ import annotations

import dataclasses

import numpy as np
import shapely
import shapely.geometry


@dataclasses.dataclass(frozen=True)
class Tile:
    """The pixels of one window of a scene, after the radiometric contract, with geography.

    Attributes:
        pixels: uint8 [S, S, 3] (R, G, B), S the tile size in pixels of the scene; the
            encoder pipeline resizes it.
        scene_id: the scene's id (STAC item id or file stem).
        sources: the scene's files, each once, in R, G, B order.
        window: (col_off, row_off, width, height) in the scene grid.
        acquired: the acquisition time (ISO 8601), or None.
        bounds: (left, bottom, right, top) in the scene CRS.
        crs: the scene CRS, "EPSG:<code>" or WKT.
        footprint: the window's polygon in EPSG:4326 (lon, lat), edges densified.
        valid_fraction: the share of its pixels that hold data.
        radiometry: the resolved radiometric contract (`Radiometry.to_dict`) that made
            `pixels`, so that the tile can be reproduced from the source.
    """

    pixels: np.ndarray
    scene_id: str
    sources: tuple[str, ...]
    window: tuple[int, int, int, int]
    acquired: str | None
    bounds: tuple[float, float, float, float]
    crs: str
    footprint: shapely.Polygon
    valid_fraction: float
    radiometry: dict

    @property
    def tile_id(self) -> str:
        """"<scene_id>/r<row_off>_c<col_off>": unique within a run over distinct scenes."""
        col_off, row_off, _, _ = self.window
        return f"{self.scene_id}/r{row_off}_c{col_off}"

    def metadata(self) -> dict:
        """Everything but the pixels, JSON-ready; `footprint` as a GeoJSON dict."""
        col_off, row_off, width, height = self.window
        footprint = shapely.geometry.mapping(self.footprint)
        return {
            "tile_id": self.tile_id,
            "scene_id": self.scene_id,
            "sources": list(self.sources),
            "window": {"col_off": col_off, "row_off": row_off, "width": width, "height": height},
            "acquired": self.acquired,
            "bounds": list(self.bounds),
            "crs": self.crs,
            "footprint": {"type": footprint["type"],
                          "coordinates": [[list(point) for point in ring] for ring in footprint["coordinates"]]},
            "valid_fraction": self.valid_fraction,
            "radiometry": self.radiometry,
        }
