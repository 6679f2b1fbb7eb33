"""Image reading, the radiometric contract and resizing, shared by feature extraction,
the trained run's encoders (`HashingModel`), archive indexing and the SavedModel export.

One reading rule for every command, so that training features, the archive index, the
served model and the ground station (`rs_hashing.edge`, which mirrors it in NumPy) see
identical inputs:

* JPEG, 8-bit PNG, BMP and GIF are decoded by TensorFlow, as uint8 R, G, B. Any other
  format (WebP, JPEG XL, which TensorFlow would also decode) is refused: its size cannot
  be checked before decoding.
* Before anything is allocated, the width and height are read from the file's header
  (`header_size`: JPEG SOF marker, PNG IHDR, BMP info header, and for a GIF its frame
  descriptors, walked block by block, since TensorFlow's canvas is the largest frame and
  giflib holds every frame) and an image above `max_pixels` (default `MAX_IMAGE_PIXELS`,
  50 Mpx, the raster reader's limit) is refused with a message that names it. A 436 KB
  PNG can declare 12000 x 12000 px (432 MB as uint8, 1.7 GB as float32); whole scenes
  go through the tiler.
* 16-bit PNG and GeoTIFF/TIFF (8 or 16 bit, read with rasterio) pass through the run's
  radiometric contract (`rs_hashing.geo.radiometry.Radiometry`, fixed mode: the range
  `range16_low..range16_high` becomes 0..255), the same arithmetic in NumPy and in the
  graph. TensorFlow alone would scale 16-bit PNGs by 1/257 and Pillow would clip them:
  the contract replaces both.
* Then the whole frame is resized to S x S (no crop) with antialiasing. An image above
  `REDUCE_AREA_FACTOR` * S * S px (4 S^2: 448 x 448 for S = 224) is first reduced in its
  own dtype by area averaging (`reduce_image`) to at most 4 S^2 px, aspect kept, so no
  float32 copy of a large image is ever made and the offline augmenter works on a
  bounded image. Images at or under 4 S^2 px (RSICD's 150 px, UCM's 256 px at S = 224)
  are not touched by this step: their pixels and augmented views are bit for bit those
  of the direct resize. Above it the result moves little (RSICD images upscaled to
  1200 px, S = 224: 0.26 levels on average, 5.8 at most); the ground station's Pillow
  resize (`edge_encoder.resize_image`) does not reduce first, so it differs by that much
  on such images.

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
from rs_hashing.geo.raster_image import MAX_IMAGE_PIXELS, read_raster_image

# An image above REDUCE_AREA_FACTOR * S^2 px is area-reduced before float conversion.
REDUCE_AREA_FACTOR = 4
# The formats whose size the header check reads (and the only ones decoded).
ENCODED_FORMATS = "JPEG, PNG, GIF or BMP"

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GIF_MAGICS = (b"GIF87a", b"GIF89a")
_BMP_MAGIC = b"BM"
# Bit depth sits at byte 24 of a PNG (8-byte signature, IHDR length, type, width, height).
_PNG_BIT_DEPTH_OFFSET = 24
_HEADER_BYTES = 32
# A GIF is walked block by block to find its frames (about 0.1 ms a step); encoders write
# 255-byte data sub-blocks, so a GIF that needs more steps than this is refused as
# unreadable rather than walked for seconds.
_GIF_STEPS_PER_BYTE = 1 / 64
_GIF_EXTRA_STEPS = 4096


def radiometry_of(features: config_lib.FeatureConfig) -> Radiometry:
    """The fixed radiometric contract of a feature configuration (the one every single
    image goes through; the percentile mode is per scene, in the tiler)."""
    return Radiometry(mode="fixed", range16=(features.range16_low, features.range16_high))


def too_many_pixels(name: str, width: int, height: int, max_pixels: int) -> str:
    """The refusal message of an image above `max_pixels` (the graph builds the same)."""
    return f"{name}: {width} x {height} px is above the limit of {max_pixels:,} px for one image"


def _has_prefix(head: tf.Tensor, magic: bytes) -> tf.Tensor:
    return tf.equal(tf.strings.substr(head, 0, len(magic)), magic)


def _bytes_at(data: tf.Tensor, pos: tf.Tensor, count: int) -> tf.Tensor:
    """`count` bytes of `data` (padded with at least `count` zero bytes) from `pos`, as int64."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(data, pos, count), tf.uint8, fixed_length=count), tf.int64)


def _little_endian(values: tf.Tensor, offset: int, length: int) -> tf.Tensor:
    return sum(values[offset + k] * 256 ** k for k in range(length))


def _big_endian(values: tf.Tensor, offset: int, length: int) -> tf.Tensor:
    return sum(values[offset + k] * 256 ** (length - 1 - k) for k in range(length))


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _gif_size(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(height, width, pixels, readable) TensorFlow's GIF decoder allocates for: its canvas
    is the largest frame, which may exceed the logical screen in the header, and giflib
    holds every frame's pixels, so the blocks are walked (a step per data sub-block)."""
    length = tf.cast(tf.strings.length(image_bytes, unit="BYTE"), tf.int64)
    max_steps = tf.cast(tf.cast(length, tf.float64) * _GIF_STEPS_PER_BYTE, tf.int64) + _GIF_EXTRA_STEPS
    data = tf.strings.join([image_bytes, b"\x00" * 16])
    screen = _bytes_at(data, 0, 13)
    screen_width, screen_height = _little_endian(screen, 6, 2), _little_endian(screen, 8, 2)

    def color_table(flags):  # The size of the colour table a flags byte announces.
        return tf.where(tf.bitwise.bitwise_and(flags, 0x80) > 0,
                        3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), tf.bitwise.bitwise_and(flags, 7)), 0)

    def step(steps, pos, in_sub_blocks, done, height, width, pixels):
        block = _bytes_at(data, tf.cast(pos, tf.int32), 10)
        introducer = block[0]
        is_frame = tf.logical_and(tf.logical_not(in_sub_blocks), tf.equal(introducer, 0x2C))
        is_extension = tf.logical_and(tf.logical_not(in_sub_blocks), tf.equal(introducer, 0x21))
        frame_width, frame_height = _little_endian(block, 5, 2), _little_endian(block, 7, 2)
        # A frame: 10-byte descriptor, local colour table, LZW code size, then sub-blocks.
        # An extension: introducer and label, then sub-blocks. A sub-block: size byte and
        # data; a zero size ends the run of sub-blocks.
        next_pos = tf.where(in_sub_blocks, pos + 1 + introducer,
                            tf.where(is_frame, pos + 11 + color_table(block[9]), pos + 2))
        ends_sub_blocks = tf.logical_and(in_sub_blocks, tf.equal(introducer, 0))
        next_in_sub_blocks = tf.logical_or(is_frame, is_extension) | (in_sub_blocks & ~ends_sub_blocks)
        # The trailer (0x3B), or any other byte where a block should start, ends the walk.
        next_done = tf.logical_not(in_sub_blocks | is_frame | is_extension)
        return (steps + 1, next_pos, next_in_sub_blocks, next_done,
                tf.where(is_frame, tf.maximum(height, frame_height), height),
                tf.where(is_frame, tf.maximum(width, frame_width), width),
                tf.where(is_frame, pixels + frame_width * frame_height, pixels))

    start = 13 + color_table(screen[10])
    steps, _, _, done, height, width, frames_pixels = tf.while_loop(
        lambda steps, pos, in_sub_blocks, done, *_: (~done) & (pos < length) & (steps < max_steps),
        step, (tf.constant(0, tf.int64), start, tf.constant(False), tf.constant(False), screen_height,
               screen_width, tf.constant(0, tf.int64)))
    # A truncated GIF (no trailer) is left to the decoder, which reports it.
    return height, width, tf.maximum(height * width, frames_pixels), done | (steps < max_steps)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def header_size(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(height, width, pixels, known) of encoded image bytes, read from the header only:
    int64 scalars and a bool that says whether the bytes start like a JPEG, PNG, GIF or
    BMP (sizes are 0 when they do not; a GIF whose blocks take too long to walk is not
    known either). `pixels` is height * width, except for a GIF
    whose frames hold more pixels together (giflib keeps them all). Nothing is decoded;
    a JPEG whose header cannot be parsed fails here as it would in the decoder."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    # The first 32 bytes, zero-padded (substr past the end of a string fails).
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(image_bytes, 0, _HEADER_BYTES),
                                              b"\x00" * _HEADER_BYTES]), 0, _HEADER_BYTES)
    b = _bytes_at(head, 0, _HEADER_BYTES)

    def signed32(value):  # BMP sizes are signed (a negative height is a top-down bitmap).
        return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

    is_jpeg, is_png = _has_prefix(head, _JPEG_MAGIC), _has_prefix(head, _PNG_MAGIC)
    is_gif = tf.logical_or(*(_has_prefix(head, magic) for magic in _GIF_MAGICS))
    is_bmp = _has_prefix(head, _BMP_MAGIC)
    zero = tf.constant(0, tf.int64)
    jpeg = tf.cast(tf.cond(is_jpeg, lambda: tf.io.extract_jpeg_shape(image_bytes)[:2],
                           lambda: tf.zeros([2], tf.int32)), tf.int64)
    gif = tf.cond(is_gif, lambda: _gif_size(image_bytes), lambda: (zero, zero, zero, tf.constant(True)))
    height = tf.where(is_jpeg, jpeg[0], tf.where(is_png, _big_endian(b, 20, 4), tf.where(
        is_gif, gif[0], tf.where(is_bmp, signed32(_little_endian(b, 22, 4)), zero))))
    width = tf.where(is_jpeg, jpeg[1], tf.where(is_png, _big_endian(b, 16, 4), tf.where(
        is_gif, gif[1], tf.where(is_bmp, signed32(_little_endian(b, 18, 4)), zero))))
    pixels = tf.where(is_gif, gif[2], height * width)
    known = tf.reduce_any(tf.stack([is_jpeg, is_png, is_gif, is_bmp])) & gif[3]
    return height, width, pixels, known


def _assert(condition: tf.Tensor, message: tf.Tensor | str, name: str) -> tf.Operation | None:
    """InvalidArgumentError(message) unless `condition`: raised at once when eager (with
    the message alone), an assert op in a graph ("assertion failed: [message]")."""
    if tf.executing_eagerly():
        if not bool(condition):
            text = message if isinstance(message, str) else message.numpy().decode("utf-8", "replace")
            raise tf.errors.InvalidArgumentError(None, None, text)
        return None
    return tf.debugging.Assert(condition, [message], name=name)


def check_pixel_count(height: tf.Tensor, width: tf.Tensor, pixels: tf.Tensor, max_pixels: int | None,
                      name: str | tf.Tensor = "image", limit_note: str = "for one image") -> tf.Operation | None:
    """InvalidArgumentError "<name>: W x H px is above the limit of N px for one image"
    (`limit_note` last) when `pixels` (see `header_size`) > max_pixels; None when there
    is no limit."""
    if max_pixels is None:
        return None
    frames = tf.where(pixels > height * width,
                      tf.strings.join([" (", tf.strings.as_string(pixels), " px in all its frames)"]), "")
    message = tf.strings.join([name, ": ", tf.strings.as_string(width), " x ", tf.strings.as_string(height),
                               " px", frames, f" is above the limit of {int(max_pixels):,} px {limit_note}"])
    return _assert(pixels <= int(max_pixels), message, "check_pixel_count")


def decode_image(image_bytes: tf.Tensor, radiometry: Radiometry | None = None,
                 max_pixels: int | None = MAX_IMAGE_PIXELS, name: str | tf.Tensor = "image") -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3] (grey images are expanded to RGB); a
    16-bit PNG goes through the radiometric contract (default: the fixed one).

    The header is checked first (InvalidArgumentError naming `name`): other formats are
    refused ("<name>: not a readable JPEG, PNG, GIF or BMP image"), and so is an image above
    `max_pixels` (None: no limit), before any pixel is allocated.
    """
    radiometry = radiometry or Radiometry()
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    height, width, pixels, known = header_size(image_bytes)
    checks = [_assert(known, tf.strings.join([name, f": not a readable {ENCODED_FORMATS} image"]),
                      "check_image_format"),
              check_pixel_count(height, width, pixels, max_pixels, name)]
    with tf.control_dependencies([check for check in checks if check is not None]):
        image_bytes = tf.identity(image_bytes)
    # Zero-padded head: substr past the end of a short (non-PNG) string would fail.
    head = tf.strings.join([tf.strings.substr(image_bytes, 0, _PNG_BIT_DEPTH_OFFSET + 1),
                            b"\x00" * (_PNG_BIT_DEPTH_OFFSET + 1)])
    is_png16 = tf.logical_and(
        tf.equal(tf.strings.substr(head, 0, len(_PNG_MAGIC)), _PNG_MAGIC),
        tf.equal(tf.strings.substr(head, _PNG_BIT_DEPTH_OFFSET, 1), b"\x10"))
    image = tf.cond(
        is_png16,
        lambda: radiometry.tf_apply(tf.io.decode_png(image_bytes, channels=3, dtype=tf.uint16)),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def read_raster(path: str, radiometry: Radiometry | None = None) -> np.ndarray:
    """A GeoTIFF/TIFF file -> uint8 [H, W, 3] through the radiometric contract (see
    `rs_hashing.geo.raster_image`, which the ground station shares; it refuses images
    above `MAX_IMAGE_PIXELS`)."""
    return read_raster_image(path, radiometry)


def raster_size(path: str) -> tuple[int, int]:
    """(width, height) of a GeoTIFF/TIFF file, from its header."""
    import rasterio  # pylint: disable=import-outside-toplevel

    with rasterio.open(path) as raster:
        return raster.width, raster.height


def is_raster_path(path: str) -> bool:
    return os.fspath(path).lower().endswith(RASTER_EXTENSIONS)


def load_pixels(path: tf.Tensor, radiometry: Radiometry | None = None,
                max_pixels: int | None = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """An image file (a string tensor, for tf.data) -> uint8 [H, W, 3] by the one rule.

    An image above `max_pixels` is refused before it is decoded, with an
    InvalidArgumentError that names the file.
    """
    radiometry = radiometry or Radiometry()

    def raster(file_name):
        file_name = np.asarray(file_name).item().decode("utf-8")
        if max_pixels is not None and max_pixels < MAX_IMAGE_PIXELS:  # read_raster checks its own limit.
            width, height = raster_size(file_name)
            if width * height > max_pixels:
                raise ValueError(too_many_pixels(file_name, width, height, max_pixels))
        return read_raster(file_name, radiometry)

    is_raster = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.tiff?")
    image = tf.cond(is_raster,
                    lambda: tf.numpy_function(raster, [path], tf.uint8, stateful=False),
                    lambda: decode_image(tf.io.read_file(path), radiometry, max_pixels, name=path))
    image.set_shape([None, None, 3])
    return image


def reduced_size(height: tf.Tensor, width: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The (height, width) `reduce_image` gives an image: unchanged at or under
    REDUCE_AREA_FACTOR * S^2 px, else scaled by sqrt(4 S^2 / (H W)), floored, at least 1,
    and never above 4 S^2 px (so reducing twice changes nothing)."""
    limit = REDUCE_AREA_FACTOR * image_size * image_size
    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    scale = tf.sqrt(limit / tf.cast(tf.maximum(height * width, 1), tf.float64))
    new_height = tf.maximum(tf.cast(tf.floor(tf.cast(height, tf.float64) * scale), tf.int64), 1)
    new_width = tf.maximum(tf.cast(tf.floor(tf.cast(width, tf.float64) * scale), tf.int64), 1)
    new_width = tf.maximum(tf.minimum(new_width, limit // new_height), 1)
    over = height * width > limit
    return tf.where(over, new_height, height), tf.where(over, new_width, width)


def reduce_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """[..., H, W, 3] -> the same dtype, at most REDUCE_AREA_FACTOR * S^2 px per image.

    An image above 4 S^2 px is averaged by area (`tf.image.resize(method="area")`, read
    in its own dtype: no float copy of the input) to `reduced_size` and rounded back to
    its integer dtype; any other image is returned as it is. Memory stays bounded for
    every image size: the float copy, the antialiasing resize and the offline augmenter
    then work on at most 4 S^2 px.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image, out_type=tf.int64)
    height, width = shape[-3], shape[-2]
    new_height, new_width = reduced_size(height, width, image_size)

    def reduced():
        small = tf.image.resize(image, tf.cast(tf.stack([new_height, new_width]), tf.int32), method="area")
        if image.dtype.is_integer:
            return tf.cast(tf.clip_by_value(tf.round(small), image.dtype.min, image.dtype.max), image.dtype)
        return tf.cast(small, image.dtype)

    reduced_image = tf.cond(tf.logical_or(new_height < height, new_width < width), reduced, lambda: image)
    if image.shape.rank is not None:
        reduced_image.set_shape(image.shape[:-3].concatenate([None, None]).concatenate(image.shape[-1:]))
    return reduced_image


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 or float [..., H, W, 3] -> float32 [..., S, S, 3] in [0, 255].

    The whole frame is resized (no crop): RSICD-AID images are 150 px and the papers'
    200-of-224 centre crop would drop a quarter of each scene. Antialiasing keeps large
    archive images from aliasing when they are shrunk. An image above 4 S^2 px is first
    reduced by `reduce_image` (see the module docstring).
    """
    image = reduce_image(image, image_size)
    image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def load_image(path: tf.Tensor, image_size: int, radiometry: Radiometry | None = None,
               max_pixels: int | None = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """An image file -> float32 [S, S, 3] in [0, 255], as every encoder input is made."""
    return resize_image(load_pixels(path, radiometry, max_pixels), image_size)
