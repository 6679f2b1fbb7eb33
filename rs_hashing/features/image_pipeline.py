"""Image reading, the radiometric contract and resizing, shared by feature extraction,
the trained run's encoders (`HashingModel`), archive indexing and the SavedModel export.

One reading rule for every command, so that training features, the archive index, the
served model and the ground station (`rs_hashing.edge`, which mirrors it in NumPy) see
identical inputs:

* JPEG, 8-bit PNG, BMP and GIF are decoded by TensorFlow, as uint8 R, G, B.
* 16-bit PNG and GeoTIFF/TIFF (8 or 16 bit, read with rasterio) pass through the run's
  radiometric contract (`rs_hashing.geo.radiometry.Radiometry`, fixed mode: the range
  `range16_low..range16_high` becomes 0..255), the same arithmetic in NumPy and in the
  graph. TensorFlow alone would scale 16-bit PNGs by 1/257 and Pillow would clip them:
  the contract replaces both.
* Then the whole frame is resized to S x S (no crop) with antialiasing.

A single image file is read whole; whole scenes (a Sentinel-2 tile is 10980 x 10980 px)
go through the tiler (`rs_hashing.geo`), which reads them window by window.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.image_files import IMAGE_EXTENSIONS, RASTER_EXTENSIONS  # noqa: F401 - re-exported
from rs_hashing.geo.raster_image import read_raster_image

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Bit depth sits at byte 24 of a PNG (8-byte signature, IHDR length, type, width, height).
_PNG_BIT_DEPTH_OFFSET = 24


def radiometry_of(features: config_lib.FeatureConfig) -> Radiometry:
    """The fixed radiometric contract of a feature configuration (the one every single
    image goes through; the percentile mode is per scene, in the tiler)."""
    return Radiometry(mode="fixed", range16=(features.range16_low, features.range16_high))


def decode_image(image_bytes: tf.Tensor, radiometry: Radiometry | None = None) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3] (grey images are expanded to RGB); a
    16-bit PNG goes through the radiometric contract (default: the fixed one)."""
    radiometry = radiometry or Radiometry()
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    is_png16 = tf.logical_and(
        tf.equal(tf.strings.substr(image_bytes, 0, len(_PNG_MAGIC)), _PNG_MAGIC),
        tf.equal(tf.strings.substr(image_bytes, _PNG_BIT_DEPTH_OFFSET, 1), b"\x10"))
    image = tf.cond(
        is_png16,
        lambda: radiometry.tf_apply(tf.io.decode_png(image_bytes, channels=3, dtype=tf.uint16)),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def read_raster(path: str, radiometry: Radiometry | None = None) -> np.ndarray:
    """A GeoTIFF/TIFF file -> uint8 [H, W, 3] through the radiometric contract (see
    `rs_hashing.geo.raster_image`, which the ground station shares)."""
    return read_raster_image(path, radiometry)


def is_raster_path(path: str) -> bool:
    return os.fspath(path).lower().endswith(RASTER_EXTENSIONS)


def load_pixels(path: tf.Tensor, radiometry: Radiometry | None = None) -> tf.Tensor:
    """An image file (a string tensor, for tf.data) -> uint8 [H, W, 3] by the one rule."""
    radiometry = radiometry or Radiometry()

    def raster(file_name):
        return read_raster(np.asarray(file_name).item().decode("utf-8"), radiometry)

    is_raster = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.tiff?")
    image = tf.cond(is_raster,
                    lambda: tf.numpy_function(raster, [path], tf.uint8, stateful=False),
                    lambda: decode_image(tf.io.read_file(path), radiometry))
    image.set_shape([None, None, 3])
    return image


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 or float [H, W, 3] -> float32 [S, S, 3] in [0, 255].

    The whole frame is resized (no crop): RSICD-AID images are 150 px and the papers'
    200-of-224 centre crop would drop a quarter of each scene. Antialiasing keeps large
    archive images from aliasing when they are shrunk.
    """
    image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def load_image(path: tf.Tensor, image_size: int, radiometry: Radiometry | None = None) -> tf.Tensor:
    """An image file -> float32 [S, S, 3] in [0, 255], as every encoder input is made."""
    return resize_image(load_pixels(path, radiometry), image_size)
