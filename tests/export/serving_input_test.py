"""Hostile and malformed requests through the exported SavedModel's signatures: each is
refused with an InvalidArgumentError that names the item or the limit, before any heavy
work, and good requests give the same codes as the Keras model.

One tiny run is exported once with small limits (max_pixels=2000, max_batch=4; the tiny
images are at most 33 x 29 px) and loaded as a client of TF Serving's Python API would
(`tf.saved_model.load(...).signatures`); the model server's own path, a TF1 session
over the SignatureDefs, is checked for one refusal and for the warm-up requests.
"""

import io
import os
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401 - registers the tokenizer ops the SavedModel uses.
from PIL import Image

from rs_hashing.export import serving_export
from tests import tiny_run

MAX_PIXELS, MAX_BATCH = 2000, 4


@pytest.fixture(scope="module")
def hashing_model(tmp_path_factory):
    return tiny_run.tiny_model(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def export_path(hashing_model, tmp_path_factory):
    pytest.importorskip("tensorflow_serving.apis.predict_pb2", reason="tensorflow-serving-api is not installed")
    return serving_export.export_savedmodel(hashing_model, str(tmp_path_factory.mktemp("serving")),
                                            max_pixels=MAX_PIXELS, max_batch=MAX_BATCH)


@pytest.fixture(scope="module")
def signatures(export_path):
    return tf.saved_model.load(export_path).signatures


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return [open(p, "rb").read() for p in tiny_run.write_images(str(tmp_path_factory.mktemp("images")), count=4)]


def _encoded(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG that declares width x height px (no pixel data: it is
    refused from its header, so nothing else is read)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4


def _refused(function, message: str, **inputs) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        function(**inputs)
    assert message in raised.value.message, raised.value.message


# ----------------------------------------------------------------- good requests

def test_good_requests_give_the_keras_codes(signatures, hashing_model, images):
    outputs = signatures["encode_image"](image_bytes=tf.constant(images))
    np.testing.assert_allclose(outputs["hash"], hashing_model.image_hash_from_bytes(images), atol=1e-5)
    texts = list(tiny_run.CAPTIONS[:3]) + ["un café près de la rivière"]  # valid non-ASCII UTF-8
    outputs = signatures["encode_text"](text=tf.constant(texts))
    np.testing.assert_allclose(outputs["hash"], hashing_model.text_hash(texts), atol=1e-5)
    one = signatures["encode_image_pixels"](image=tf.zeros([1, 40, 50, 3], tf.uint8))  # 2000 px: at the limit
    assert one["code"].shape == (1, tiny_run.BITS)


def test_warmup_requests_pass_through_the_model_servers_path(export_path):
    from tests.export.serving_export_test import SignatureSession  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=import-outside-toplevel

    server = SignatureSession(export_path)
    replayed = []
    for record in tf.data.TFRecordDataset(os.path.join(export_path, serving_export.WARMUP_FILE)).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        replayed.append(server.predict(request.SerializeToString()))
    assert len(replayed) == len(serving_export.SIGNATURES)
    # The server's path reports a refusal by the same message.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] cannot be decoded"):
        server.run("encode_image", {"image_bytes": np.array(
            [_encoded(np.zeros((8, 8, 3), np.uint8), "PNG"), b"nope"], dtype=object)})


# ----------------------------------------------------------------- batches

@pytest.mark.parametrize("name, key, empty, item", [
    ("encode_text", "text", tf.constant([], tf.string), "text"),
    ("encode_image", "image_bytes", tf.constant([], tf.string), "image"),
    ("encode_image_pixels", "image", tf.zeros([0, 8, 8, 3], tf.uint8), "image"),
])
def test_empty_batches_are_refused(signatures, name, key, empty, item):
    _refused(signatures[name], f"empty batch: send at least one {item} in {key}", **{key: empty})


def test_batches_above_max_batch_are_refused(signatures, images):
    _refused(signatures["encode_text"], "batch of 5 items in text is above the limit of 4 (max_batch); split it",
             text=tf.constant(["a road"] * 5))
    _refused(signatures["encode_image"], "batch of 5 items in image_bytes is above the limit of 4 (max_batch)",
             image_bytes=tf.constant(images + images[:1]))
    _refused(signatures["encode_image_pixels"], "batch of 6 items in image is above the limit of 4 (max_batch)",
             image=tf.zeros([6, 8, 8, 3], tf.uint8))


# ----------------------------------------------------------------- images

def test_the_undecodable_item_is_named(signatures, images):
    corrupt_jpeg = b"\xff\xd8\xff\xe0 this is not a jpeg"
    truncated_png = images[1][:60]
    webp = _encoded(np.zeros((8, 8, 3), np.uint8), "WEBP")  # TensorFlow decodes it, unchecked: refused
    for bad in (corrupt_jpeg, truncated_png, b"not an image at all", b"", webp):
        batch = [images[0], images[1], bad, images[2]]
        _refused(signatures["encode_image"], "image_bytes[2] cannot be decoded (not a readable JPEG, PNG, GIF "
                 "or BMP image)", image_bytes=tf.constant(batch))
    _refused(signatures["encode_image"], "image_bytes[0] cannot be decoded", image_bytes=tf.constant([b"x", b"y"]))


def test_images_above_max_pixels_are_refused_before_decoding(signatures, images):
    _refused(signatures["encode_image"],
             "image_bytes[1]: 12000 x 12000 px is above the limit of 2,000 px for one image (max_pixels)",
             image_bytes=tf.constant([images[0], _png_header(12000, 12000), images[1]]))
    big_jpeg = _encoded(np.zeros((41, 50, 3), np.uint8), "JPEG")
    _refused(signatures["encode_image"], "image_bytes[3]: 50 x 41 px is above the limit of 2,000 px",
             image_bytes=tf.constant(images[:3] + [big_jpeg]))
    _refused(signatures["encode_image_pixels"],
             "image: 41 x 50 px per image is above the limit of 2,000 px for one image (max_pixels)",
             image=tf.zeros([2, 50, 41, 3], tf.uint8))


def test_a_gif_frame_larger_than_its_header_screen_is_measured(signatures):
    # The logical screen says 1 x 1; the frame (what TensorFlow allocates) is 60 x 40.
    gif = bytearray(_encoded(np.zeros((40, 60), np.uint8), "GIF"))
    gif[6:10] = struct.pack("<HH", 1, 1)
    _refused(signatures["encode_image"], "image_bytes[0]: 60 x 40 px is above the limit of 2,000 px",
             image_bytes=tf.constant([bytes(gif)]))
    small = _encoded(np.zeros((20, 30), np.uint8), "GIF")
    assert signatures["encode_image"](image_bytes=tf.constant([small]))["code"].shape == (1, tiny_run.BITS)


# ----------------------------------------------------------------- text

def test_invalid_utf8_is_refused_naming_the_item(signatures):
    for bad in (b"\xff\xfe a road", b"caf\xc3", b"\xed\xa0\x80 surrogate", b"\xc0\xaf overlong"):
        _refused(signatures["encode_text"], "text[1] is not valid UTF-8",
                 text=tf.constant([b"a road", bad, b"many trees"]))
