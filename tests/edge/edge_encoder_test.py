"""Tests for rs_hashing.edge.edge_encoder: preprocessing parity with the training
pipeline, batching, errors, and that the module never pulls in TensorFlow."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from rs_hashing import codes as codes_lib
from rs_hashing.edge import edge_encoder
from rs_hashing.export import tflite_export
from rs_hashing.edge.edge_encoder import EdgeEncoder
from rs_hashing.features import image_pipeline
from tests import testing
from tests import tiny_run

HAS_SIMPLEJPEG = edge_encoder._simplejpeg() is not None
needs_simplejpeg = pytest.mark.skipif(not HAS_SIMPLEJPEG, reason="simplejpeg is not installed")


@pytest.fixture(scope="module")
def hashing_model(tmp_path_factory):
    return tiny_run.tiny_model(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def model_path(hashing_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("edge") / "codes.tflite")
    with open(path, "wb") as f:
        f.write(tflite_export.convert(tflite_export.image_hashing_function(hashing_model), "fp32"))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return tiny_run.write_images(str(tmp_path_factory.mktemp("images")), count=5)


def _texture(height, width, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 3 + 2, width // 3 + 2, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def _encoded(pixels, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_png_and_grey_decode_exactly_as_training():
    pixels = _texture(13, 21)
    for data in (_encoded(pixels, "PNG"), _encoded(pixels[..., 0], "PNG"),
                 _encoded(np.dstack([pixels, pixels[..., :1]]), "PNG")):  # RGB, grey, RGBA
        np.testing.assert_array_equal(edge_encoder.decode_image(data),
                                      image_pipeline.decode_image(tf.constant(data)).numpy())


@needs_simplejpeg
def test_jpeg_decodes_exactly_as_training_with_simplejpeg():
    for seed, subsampling in ((0, 2), (1, 0)):  # 4:2:0 and 4:4:4 chroma
        data = _encoded(_texture(30, 44, seed), "JPEG", quality=80, subsampling=subsampling)
        np.testing.assert_array_equal(edge_encoder.decode_image(data, "simplejpeg"),
                                      image_pipeline.decode_image(tf.constant(data)).numpy())


def test_jpeg_with_pillow_differs_only_by_the_dct():
    # Pillow's accurate DCT equals TensorFlow's INTEGER_ACCURATE decode bit for bit; the
    # training pipeline's default (fast) DCT differs by a few levels.
    data = _encoded(_texture(30, 44), "JPEG", quality=80)
    pillow = edge_encoder.decode_image(data, "pillow")
    np.testing.assert_array_equal(pillow, tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"))
    training = image_pipeline.decode_image(tf.constant(data)).numpy()
    assert 0 < np.abs(pillow.astype(int) - training).max() <= 20


@pytest.mark.parametrize("height, width, size", [(23, 37, 16), (9, 7, 16), (150, 150, 224), (300, 200, 224)])
def test_resize_matches_the_antialiased_training_resize(height, width, size):
    pixels = _texture(height, width)
    expected = image_pipeline.resize_image(tf.constant(pixels), size).numpy()
    resized = edge_encoder.resize_image(pixels, size)
    assert resized.shape == (size, size, 3) and resized.dtype == np.float32
    np.testing.assert_allclose(resized, expected, atol=3e-3)


def test_unknown_decoder_and_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="jpeg_decoder='turbo' is not one of"):
        edge_encoder.jpeg_decoder_used("turbo")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg: cannot decode image"):
        edge_encoder.load_image(str(bad), 16)
    with pytest.raises(FileNotFoundError, match="missing.png: no such image file"):
        edge_encoder.load_image(str(tmp_path / "missing.png"), 16)


def test_encoder_reads_its_model_and_matches_the_interpreter(hashing_model, model_path, images):
    runtime = EdgeEncoder(model_path, batch_size=2)
    assert (runtime.image_size, runtime.bits) == (tiny_run.IMAGE_SIZE, tiny_run.BITS)
    outputs = runtime.encode_files(images)
    pixels = np.stack([edge_encoder.load_image(p, tiny_run.IMAGE_SIZE, runtime.jpeg_decoder) for p in images])
    expected = tflite_export.run_tflite(open(model_path, "rb").read(), {"image": pixels}, batch_size=5)
    for name in edge_encoder.OUTPUTS:
        np.testing.assert_array_equal(outputs[name], expected[name])
    np.testing.assert_array_equal(outputs["packed"], codes_lib.pack(outputs["code"]))
    assert outputs["code"].shape == (5, tiny_run.BITS)
    assert EdgeEncoder(model_path).encode_files([])["packed"].shape == (0, tiny_run.BITS // 8)
    with pytest.raises(ValueError, match=r"pixels must have shape \[N, 16, 16, 3\], got \[2, 8, 8, 3\]"):
        runtime.encode_pixels(np.zeros((2, 8, 8, 3)))


@needs_simplejpeg
def test_edge_codes_equal_the_keras_codes_with_simplejpeg(hashing_model, model_path, images):
    outputs = EdgeEncoder(model_path, jpeg_decoder="simplejpeg").encode_files(images)
    reference = hashing_model.image_hash_from_bytes([open(p, "rb").read() for p in images])
    np.testing.assert_array_equal(outputs["code"], np.where(reference >= 0, 1, -1))


def test_iter_files_reports_bad_files_and_keeps_order(model_path, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    paths = [images[0], str(bad), images[1], str(tmp_path / "gone.jpg")]
    results = list(EdgeEncoder(model_path, batch_size=3).iter_files(paths))
    assert [r[0] for r in results] == paths
    assert [r[1] is None for r in results] == [False, True, False, True]
    assert "bad.png: cannot decode image" in results[1][2] and "gone.jpg: no such image file" in results[3][2]
    with pytest.raises(ValueError, match="bad.png"):
        EdgeEncoder(model_path).encode_files(paths)


def test_wrong_model_files_are_refused(hashing_model, tmp_path):
    text_model = tmp_path / "text.tflite"
    text_model.write_bytes(tflite_export.convert(tflite_export.text_hashing_function(hashing_model), "fp32"))
    with pytest.raises(ValueError, match="not an image-hashing model"):
        EdgeEncoder(str(text_model))
    with pytest.raises(FileNotFoundError, match="no such TFLite model file"):
        EdgeEncoder(str(tmp_path / "none.tflite"))


def test_find_images_expands_folders(images, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    folder = os.path.dirname(images[0])
    assert edge_encoder.find_images([folder, "x.jpg"]) == sorted(images) + ["x.jpg"]


def test_operator_names_of_a_converted_model(model_path):
    names = edge_encoder.operator_names(open(model_path, "rb").read())
    assert {"CONV_2D", "FULLY_CONNECTED", "TANH", "MEAN"} <= set(names)
    assert not [n for n in names if n.startswith("CUSTOM")]


def test_module_imports_neither_tensorflow_nor_keras():
    code = ("import sys; import rs_hashing.edge.edge_encoder; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'absl')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=testing.REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
