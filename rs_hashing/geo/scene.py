"""One Earth-observation scene: three raster bands (R, G, B) on one map grid, with geography.

Where scenes come from (`Scene.discover` picks by what the path is):
  * a GeoTIFF / Cloud-Optimized GeoTIFF (any GDAL raster), `Scene.from_file`: bands by
    1-based index, e.g. `bands=(4, 3, 2)`; by default the first three bands, or a
    single-band file's band repeated three times. `scene_id` is the file stem.
  * a local STAC Item JSON, `Scene.from_stac_item`: bands by asset key, e.g.
    `("B04", "B03", "B02")`, or by eo:bands common name ("red", "green", "blue", read
    from `eo:bands` / `bands` of the assets); an item with one multiband raster asset
    also takes 1-based indices into it. By default: the assets whose common names are
    red, green and blue, else the first three bands of the item's only raster asset. An
    asset key names band 1 of its file; a common name found in a multiband asset's
    eo:bands names that band.
    `scene_id` is the item id, the acquisition time the item's `datetime` (None for an
    item known only to lie in a period: null datetime with start/end_datetime).
    Relative asset hrefs are relative to the JSON file.
  * a local STAC ItemCollection JSON, `Scene.from_stac_item_collection`: one scene per item.
  * a folder, `Scene.from_folder`: every *.tif / *.tiff below it (recursively, sorted by
    path), one scene each.

Grids. The three bands of a scene must share one CRS. Bands on different grids of that
CRS (Sentinel-2's 20 m bands beside its 10 m ones) are resampled on read, nearest
neighbour, to the grid of the finest band (the first of the finest, in R, G, B order),
provided they cover its whole extent; bands in another CRS, bands that do not cover the
finest band's extent, and rotated or south-up grids are refused with an error naming
the asset. Pixels must be uint8 or uint16, the same type in all three bands.

Nodata: the `nodata` argument if given, else the files' nodata value (the selected
bands must not disagree), else None. The valid-pixel rule is `valid_mask`.

Acquisition time: STAC `datetime`, else the GeoTIFF tag TIFFTAG_DATETIME
("YYYY:MM:DD HH:MM:SS", no time zone), else None; kept as an ISO 8601 string.

Every error is a `SceneError` naming the file (and asset) and the problem.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyproj
import rasterio
import rasterio.windows
import shapely
import shapely.geometry
from affine import Affine
from rasterio.transform import array_bounds

from rs_hashing.geo.scene_error import SceneError

RASTER_SUFFIXES = (".tif", ".tiff")
PIXEL_TYPES = ("uint8", "uint16")
RGB_COMMON_NAMES = ("red", "green", "blue")
# Media types and suffixes of STAC assets that are rasters GDAL reads.
_RASTER_MEDIA = ("image/tiff", "image/jp2", "image/vnd.stac.geotiff")
_RASTER_HREF_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")


@dataclasses.dataclass(frozen=True)
class Scene:
    """Three raster bands (R, G, B) on one grid, and where and when they were taken.

    Attributes:
        scene_id: the STAC item id, else the file stem.
        sources: the file of each of R, G, B (the same file three times for a
            multiband file).
        band_indexes: each band's 1-based index in its file.
        crs: "EPSG:<code>" where the CRS has one, else its WKT.
        transform: the affine transform of the scene grid (north up).
        width, height: the grid's size in pixels.
        nodata: the nodata value, or None (see `valid_mask`).
        acquired: the acquisition time (ISO 8601), or None.
        dtype: "uint8" or "uint16".
        assets: the STAC asset key of each of R, G, B (None for plain files).
    """

    scene_id: str
    sources: tuple[str, str, str]
    band_indexes: tuple[int, int, int]
    crs: str
    transform: Affine
    width: int
    height: int
    nodata: float | None
    acquired: str | None
    dtype: str
    assets: tuple[str, str, str] | None = None

    # ------------------------------------------------------------------ geometry
    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the scene CRS."""
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return (west, south, east, north)

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel (width, height) in CRS units (metres for projected CRSs)."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def unique_sources(self) -> tuple[str, ...]:
        """The files of the scene, each once, in R, G, B order."""
        return tuple(dict.fromkeys(self.sources))

    def window_bounds(self, window: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the scene CRS of a pixel window
        (col_off, row_off, width, height)."""
        left, bottom, right, top = rasterio.windows.bounds(rasterio.windows.Window(*window), self.transform)
        return (float(left), float(bottom), float(right), float(top))

    def footprint(self, bounds: Sequence[float] | None = None, densify: int = 21) -> shapely.Polygon:
        """The polygon (lon, lat; EPSG:4326) of `bounds` in the scene CRS, by default
        the whole scene.

        Each edge of the rectangle is cut into `densify` - 1 equal pieces before
        projecting, so that the polygon follows the curved image of the edge. Footprints
        across the antimeridian are not split.
        """
        left, bottom, right, top = self.bounds if bounds is None else bounds
        steps = np.linspace(0.0, 1.0, max(2, int(densify)))[:-1]
        xs = np.concatenate([left + (right - left) * steps, np.full_like(steps, right),
                             right - (right - left) * steps, np.full_like(steps, left)])
        ys = np.concatenate([np.full_like(steps, bottom), bottom + (top - bottom) * steps,
                             np.full_like(steps, top), top - (top - bottom) * steps])
        lon, lat = _transformer(self.crs, "EPSG:4326").transform(xs, ys)
        return shapely.Polygon(np.column_stack([lon, lat]))

    def window_of(self, area: Any, crs: str | None = None) -> tuple[int, int, int, int]:
        """The pixel window (col_off, row_off, width, height) of an area of the scene.

        Args:
            area: (left, bottom, right, top) bounds, in the scene CRS unless `crs` says
                otherwise; or a footprint, a shapely geometry or GeoJSON dict, in
                EPSG:4326 unless `crs` says otherwise (its bounds in the scene CRS count).
            crs: the CRS of `area`.

        The bounds go through `rasterio.windows.from_bounds` on the scene transform and
        both window corners are rounded to the nearest pixel edge, so a tile's bounds or
        footprint give back exactly its window (the round trip of a footprint is off by
        nanometres, far below half a pixel).
        """
        if isinstance(area, dict):
            area = shapely.geometry.shape(area)
        if isinstance(area, shapely.Geometry):
            source_crs = crs or "EPSG:4326"
            xs, ys = np.asarray(shapely.get_coordinates(area)).T
            if source_crs != self.crs:
                xs, ys = _transformer(source_crs, self.crs).transform(xs, ys)
            left, bottom, right, top = float(np.min(xs)), float(np.min(ys)), float(np.max(xs)), float(np.max(ys))
        else:
            left, bottom, right, top = (float(value) for value in area)
            if crs is not None and crs != self.crs:
                xs, ys = _transformer(crs, self.crs).transform([left, right, right, left], [bottom, bottom, top, top])
                left, bottom, right, top = min(xs), min(ys), max(xs), max(ys)
        window = rasterio.windows.from_bounds(left, bottom, right, top, self.transform)
        col_off, row_off = round(window.col_off), round(window.row_off)
        col_end, row_end = round(window.col_off + window.width), round(window.row_off + window.height)
        return (col_off, row_off, col_end - col_off, row_end - row_off)

    def valid_mask(self, pixels: np.ndarray) -> np.ndarray:
        """bool [..., ] of pixels [..., 3]: True where the pixel holds data.

        With a nodata value, a pixel is valid only where none of its three bands equals
        it (GDAL's per-band masks, combined). Without one, a pixel whose three bands are
        all zero is taken as nodata (the fill of most uint8/uint16 products).
        """
        red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        if self.nodata is None:
            return (red != 0) | (green != 0) | (blue != 0)
        return (red != self.nodata) & (green != self.nodata) & (blue != self.nodata)

    # ------------------------------------------------------------------ sources
    @classmethod
    def discover(cls, source: str, bands: Sequence[int | str] | None = None,
                 nodata: float | None = None) -> list["Scene"]:
        """The scenes of a folder, a STAC Item or ItemCollection JSON, or a raster file."""
        source = os.fspath(source)
        if os.path.isdir(source):
            return cls.from_folder(source, bands, nodata)
        if source.lower().endswith(".json"):
            kind = _read_json(source).get("type")
            if kind == "Feature":
                return [cls.from_stac_item(source, bands, nodata)]
            if kind == "FeatureCollection":
                return cls.from_stac_item_collection(source, bands, nodata)
            raise SceneError(f"{source}: neither a STAC Item (type Feature) nor an ItemCollection "
                             f"(type FeatureCollection): type is {kind!r}")
        return [cls.from_file(source, bands, nodata)]

    @classmethod
    def from_folder(cls, folder: str, bands: Sequence[int] | None = None,
                    nodata: float | None = None) -> list["Scene"]:
        """One scene per *.tif / *.tiff file below `folder`, recursively, sorted by path."""
        if not os.path.isdir(folder):
            raise SceneError(f"{folder}: no such folder")
        paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                       for name in names if name.lower().endswith(RASTER_SUFFIXES))
        if not paths:
            raise SceneError(f"{folder}: no *.tif or *.tiff file in this folder or below it")
        return [cls.from_file(path, bands, nodata) for path in paths]

    @classmethod
    def from_file(cls, path: str, bands: Sequence[int] | None = None, nodata: float | None = None,
                  scene_id: str | None = None) -> "Scene":
        """The scene of one raster file; `bands` are 1-based indices (1 or 3 of them)."""
        path = os.fspath(path)
        with _open(path, path) as dataset:
            if bands is None:
                if dataset.count == 1:
                    bands = (1, 1, 1)
                elif dataset.count >= 3:
                    bands = (1, 2, 3)
                else:
                    raise SceneError(f"{path}: has {dataset.count} bands; give 3 band indices (R, G, B) "
                                     "or 1 to repeat")
            indexes = _band_indexes(bands, dataset, path)
            grid = _Grid.of(dataset, path)
            acquired = _tiff_datetime(dataset.tags().get("TIFFTAG_DATETIME"))
        stem = os.path.basename(path)
        stem = stem[:stem.rfind(".")] if "." in stem else stem
        return cls._assemble(scene_id or stem, [(path, index, None) for index in indexes], {path: grid},
                             nodata, acquired)

    @classmethod
    def from_stac_item(cls, item: Any, bands: Sequence[int | str] | None = None,
                       nodata: float | None = None, base_dir: str | None = None) -> "Scene":
        """The scene of a STAC Item: a path to its JSON, or a `pystac.Item`.

        Args:
            item: the item or its JSON file.
            bands: asset keys or eo:bands common names (or, for an item with one
                multiband raster asset, 1-based indices); 1 or 3 of them.
            nodata: overrides the files' nodata value.
            base_dir: the folder relative asset hrefs are relative to, when the item
                has no self link (items read from an ItemCollection).
        """
        import pystac  # pylint: disable=import-outside-toplevel

        where = "STAC item"
        if not isinstance(item, pystac.Item):
            where = os.fspath(item)
            if not os.path.isfile(where):
                raise SceneError(f"{where}: no such file")
            try:
                item = pystac.Item.from_file(where)
            except Exception as error:  # pystac raises several types for bad JSON.
                raise SceneError(f"{where}: not a STAC Item ({error})") from error
        else:
            where = item.get_self_href() or f"STAC item {item.id}"
        base_dir = base_dir or os.path.dirname(item.get_self_href() or where)
        selected = _stac_bands(item, bands, where)
        datasets = {}
        picks = []
        for key, index in selected:
            href = _asset_path(item.assets[key].href, base_dir)
            label = f"{where}: asset {key} ({href})"
            if href not in datasets:
                with _open(href, label) as dataset:
                    datasets[href] = (_Grid.of(dataset, label), dataset.count)
            if not 1 <= index <= datasets[href][1]:
                raise SceneError(f"{label}: band {index} is out of range; the file has {datasets[href][1]} bands")
            picks.append((href, index, key))
        # An item known only to lie in a period (null datetime, start/end) has no time.
        start, end = item.common_metadata.start_datetime, item.common_metadata.end_datetime
        acquired = item.datetime or (start if start is not None and start == end else None)
        return cls._assemble(item.id, picks, {href: grid for href, (grid, _) in datasets.items()}, nodata,
                             acquired.isoformat() if acquired else None, where=where)

    @classmethod
    def from_stac_item_collection(cls, path: str, bands: Sequence[int | str] | None = None,
                                  nodata: float | None = None) -> list["Scene"]:
        """One scene per item of a local STAC ItemCollection JSON file."""
        import pystac  # pylint: disable=import-outside-toplevel

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise SceneError(f"{path}: no such file")
        try:
            collection = pystac.ItemCollection.from_file(path)
        except Exception as error:  # pystac raises several types for bad JSON.
            raise SceneError(f"{path}: not a STAC ItemCollection ({error})") from error
        if not len(collection.items):
            raise SceneError(f"{path}: the ItemCollection holds no items")
        scenes = []
        for item in collection.items:
            try:
                scenes.append(cls.from_stac_item(item, bands, nodata, base_dir=os.path.dirname(path)))
            except SceneError as error:
                raise SceneError(f"{path}: item {item.id}: {error}") from error
        return scenes

    @classmethod
    def _assemble(cls, scene_id: str, picks: list, grids: dict, nodata: float | None,
                  acquired: str | None, where: str | None = None) -> "Scene":
        """The scene of three (file, band index, asset key) picks on the given grids."""
        labels = {path: (f"{where}: asset {key} ({path})" if key else path) for path, _, key in picks}
        first_path = picks[0][0]
        # The finest grid is the scene grid: the first of the finest, in R, G, B order.
        scene_path = min(dict.fromkeys(path for path, _, _ in picks), key=lambda path: grids[path].resolution)
        scene_grid = grids[scene_path]
        dtypes = set()
        nodata_values = {}
        for path, index, _ in picks:
            grid = grids[path]
            if grid.crs != scene_grid.crs:
                raise SceneError(f"{labels[path]}: is in {grid.crs_name}, but {labels[scene_path]} is in "
                                 f"{scene_grid.crs_name}; the bands of one scene must share a CRS (reproject first)")
            if not grid.covers(scene_grid):
                raise SceneError(f"{labels[path]}: bounds {grid.bounds} do not cover the extent "
                                 f"{scene_grid.bounds} of {labels[scene_path]}; bands on different grids must "
                                 "cover the finest band's extent")
            dtype = grid.dtypes[index - 1]
            if dtype not in PIXEL_TYPES:
                raise SceneError(f"{labels[path]}: band {index} is {dtype}; only {PIXEL_TYPES} pixels are supported")
            dtypes.add(dtype)
            file_nodata = grid.nodata[index - 1]
            if file_nodata is not None:
                nodata_values.setdefault(file_nodata, labels[path])
        if len(dtypes) > 1:
            raise SceneError(f"{labels[first_path]}: the selected bands mix pixel types {sorted(dtypes)}")
        if nodata is None and len(nodata_values) > 1:
            named = ", ".join(f"{value} in {label}" for value, label in nodata_values.items())
            raise SceneError(f"{labels[first_path]}: the selected bands disagree on nodata ({named}); "
                             "give nodata explicitly")
        if nodata is None and nodata_values:
            nodata = next(iter(nodata_values))
        return cls(scene_id=str(scene_id), sources=tuple(path for path, _, _ in picks),
                   band_indexes=tuple(index for _, index, _ in picks), crs=scene_grid.crs_name,
                   transform=scene_grid.transform, width=scene_grid.width, height=scene_grid.height,
                   nodata=None if nodata is None else float(nodata), acquired=acquired, dtype=dtypes.pop(),
                   assets=tuple(key for _, _, key in picks) if where else None)


@dataclasses.dataclass(frozen=True)
class _Grid:
    """What a scene needs to know of one opened file."""

    crs: Any
    crs_name: str
    transform: Affine
    width: int
    height: int
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]

    @classmethod
    def of(cls, dataset: Any, label: str) -> "_Grid":
        if dataset.crs is None:
            raise SceneError(f"{label}: has no CRS; tiles need geography (georeference the file, "
                             "e.g. gdal_edit.py -a_srs EPSG:<code>)")
        transform = dataset.transform
        if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
            raise SceneError(f"{label}: its grid is rotated or not north-up ({tuple(transform)[:6]}); "
                             "warp it to a north-up grid first")
        epsg = dataset.crs.to_epsg()
        return cls(crs=dataset.crs, crs_name=f"EPSG:{epsg}" if epsg else dataset.crs.to_wkt(),
                   transform=transform, width=dataset.width, height=dataset.height,
                   dtypes=tuple(dataset.dtypes), nodata=tuple(dataset.nodatavals))

    @property
    def resolution(self) -> float:
        return abs(self.transform.a) * abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return tuple(float(value) for value in array_bounds(self.height, self.width, self.transform))

    def covers(self, other: "_Grid") -> bool:
        """Whether this grid covers `other`'s extent (to 1% of other's pixel)."""
        if self.transform == other.transform and (self.width, self.height) == (other.width, other.height):
            return True
        left, bottom, right, top = self.bounds
        other_left, other_bottom, other_right, other_top = other.bounds
        tolerance = 0.01 * min(abs(other.transform.a), abs(other.transform.e))
        return (left <= other_left + tolerance and bottom <= other_bottom + tolerance
                and right >= other_right - tolerance and top >= other_top - tolerance)


@functools.lru_cache(maxsize=64)
def _transformer(source_crs: str, target_crs: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(source_crs, target_crs, always_xy=True)


def _open(path: str, label: str) -> Any:
    """rasterio.open(path), with errors that name `label`."""
    if "://" not in path and not os.path.exists(path):
        raise SceneError(f"{label}: no such file")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        raise SceneError(f"{label}: not a raster GDAL can read ({error})") from error


def _band_indexes(bands: Sequence[int], dataset: Any, path: str) -> tuple[int, int, int]:
    if isinstance(bands, (int, str)):
        bands = (bands,)
    bands = tuple(bands)
    if len(bands) not in (1, 3):
        raise SceneError(f"{path}: give 3 band indices (R, G, B) or 1 to repeat, got {bands}")
    for band in bands:
        if isinstance(band, bool) or not isinstance(band, (int, np.integer)):
            raise SceneError(f"{path}: band indices must be 1-based integers, got {band!r}")
    if len(set(bands)) > dataset.count:
        raise SceneError(f"{path}: has {dataset.count} band(s), fewer than the {len(set(bands))} asked ({bands})")
    for band in bands:
        if not 1 <= band <= dataset.count:
            raise SceneError(f"{path}: band {band} is out of range; the file has {dataset.count} bands (1-based)")
    return tuple(int(band) for band in bands) * (3 if len(bands) == 1 else 1)


def _asset_path(href: str, base_dir: str) -> str:
    if "://" in href or os.path.isabs(href):
        return href
    return os.path.normpath(os.path.join(base_dir, href))


def _common_names(asset: Any) -> list[str | None]:
    """The eo:bands common names of an asset's bands (STAC 1.0 `eo:bands` or 1.1 `bands`)."""
    fields = asset.extra_fields
    if isinstance(fields.get("eo:bands"), list):
        return [band.get("common_name") for band in fields["eo:bands"]]
    if isinstance(fields.get("bands"), list):
        return [band.get("eo:common_name") for band in fields["bands"]]
    return []


def _is_raster(asset: Any) -> bool:
    media = (asset.media_type or "").lower()
    return any(media.startswith(kind) for kind in _RASTER_MEDIA) or (
        not media and asset.href.lower().endswith(_RASTER_HREF_SUFFIXES))


def _stac_bands(item: Any, bands: Sequence[int | str] | None, where: str) -> list[tuple[str, int]]:
    """(asset key, 1-based band index) of R, G, B."""
    rasters = [key for key, asset in item.assets.items() if _is_raster(asset)]
    if bands is None:
        named = {}
        for key in rasters:
            for position, name in enumerate(_common_names(item.assets[key])):
                named.setdefault(name, (key, position + 1))
        if all(name in named for name in RGB_COMMON_NAMES):
            return [named[name] for name in RGB_COMMON_NAMES]
        if len(rasters) == 1:
            return [(rasters[0], index) for index in (1, 2, 3)]
        raise SceneError(f"{where}: item {item.id}: no raster assets with the eo:bands common names red, "
                         f"green and blue; give bands as asset keys (raster assets: {rasters})")
    if isinstance(bands, (int, str)):
        bands = (bands,)
    bands = tuple(bands)
    if len(bands) not in (1, 3):
        raise SceneError(f"{where}: give 3 bands (R, G, B) or 1 to repeat, got {bands}")
    picks = []
    for band in bands:
        if isinstance(band, (int, np.integer)) and not isinstance(band, bool):
            if len(rasters) != 1:
                raise SceneError(f"{where}: band index {band} is ambiguous: the item has {len(rasters)} raster "
                                 f"assets {rasters}; give asset keys")
            picks.append((rasters[0], int(band)))
            continue
        if band in item.assets:
            picks.append((band, 1))
            continue
        found = [(key, position + 1) for key in rasters
                 for position, name in enumerate(_common_names(item.assets[key])) if name == band]
        if not found:
            raise SceneError(f"{where}: item {item.id}: unknown asset key or common name {band!r}; "
                             f"asset keys: {sorted(item.assets)}")
        picks.append(found[0])
    return picks * (3 if len(picks) == 1 else 1)


def _tiff_datetime(value: str | None) -> str | None:
    """TIFFTAG_DATETIME "YYYY:MM:DD HH:MM:SS" -> ISO 8601 (no time zone), else None."""
    if not value:
        return None
    try:
        return datetime.datetime.strptime(value.strip(), "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise SceneError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SceneError(f"{path}: not a JSON file ({error})") from error
    if not isinstance(record, dict):
        raise SceneError(f"{path}: not a STAC Item or ItemCollection (a JSON {type(record).__name__})")
    return record

