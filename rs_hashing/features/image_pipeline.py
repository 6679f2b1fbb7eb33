"""Image decoding and resizing shared by feature extraction, indexing and export.

One function turns encoded image bytes into the float pixels the encoders take, so that
training features, the archive index and the exported SavedModel see identical inputs.
"""

from __future__ import annotations

import tensorflow as tf


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3] (grey images are expanded to RGB)."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
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


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    return resize_image(decode_image(tf.io.read_file(path)), image_size)
