"""One image file (or its bytes) read with rasterio: GeoTIFF/TIFF of any bit depth the
contract knows, and 16-bit PNG, as uint8 R, G, B through the radiometric contract.

Shared by the TensorFlow side (`rs_hashing.features.image_pipeline`) and the
ground-station runtime (`rs_hashing.edge`), so both read these files identically; it
imports only NumPy and rasterio. Whole scenes go through the tiler instead.
"""

from __future__ import annotations

import warnings

import numpy as np

from rs_hashing.geo.radiometry import Radiometry

# An image bigger than this is a scene: read it window by window with the tiler.
MAX_IMAGE_PIXELS = 50_000_000


def rgb_bands(count: int) -> list[int]:
    """The 1-based bands read as R, G, B: a grey band (plus alpha) is repeated, otherwise
    the first three (a fourth, alpha or near-infrared, is left out)."""
    return [1, 1, 1] if count <= 2 else [1, 2, 3]


def read_raster_image(source, radiometry: Radiometry | None = None, name: str | None = None) -> np.ndarray:
    """A raster file path or its bytes -> uint8 [H, W, 3] through the radiometric contract.

    Raises:
        ValueError: not a readable raster, pixels that are not uint8/uint16, or an image
            above `MAX_IMAGE_PIXELS` (the message names the file).
    """
    import rasterio  # pylint: disable=import-outside-toplevel
    from rasterio.io import MemoryFile  # pylint: disable=import-outside-toplevel

    radiometry = radiometry or Radiometry()
    name = name or (source if isinstance(source, str) else "image")
    try:
        with warnings.catch_warnings():  # A PNG or plain TIFF has no georeferencing; an image needs none.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            if isinstance(source, (bytes, bytearray)):
                with MemoryFile(bytes(source)) as memory, memory.open() as raster:
                    return _read(raster, radiometry, name)
            with rasterio.open(source) as raster:
                return _read(raster, radiometry, name)
    except rasterio.errors.RasterioError as e:
        raise ValueError(f"{name}: not a readable raster ({e})") from None


def _read(raster, radiometry: Radiometry, name: str) -> np.ndarray:
    if raster.dtypes[0] not in ("uint8", "uint16"):
        raise ValueError(f"{name}: {raster.dtypes[0]} pixels; images must be uint8 or uint16")
    if raster.width * raster.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{name}: {raster.width} x {raster.height} px is a whole scene, above the "
                         f"{MAX_IMAGE_PIXELS:,} px read as one image; index it with the tiler "
                         "(rs-hashing index --scenes)")
    pixels = raster.read(rgb_bands(raster.count))
    return radiometry.apply(np.moveaxis(pixels, 0, -1))
