"""Tests for TF-Hub image feature-vector modules as Keras 3 image encoders."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.encoders.image_encoder import build_image_encoder
from rs_hashing.encoders.tfhub_image_encoder import TfHubImageEncoder
from tests import testing

_SIZE = testing.TINY["image_size"]
_BATCH = testing.TINY["batch_size"]
_FEATURE_DIM = 5
_KERNEL = np.random.default_rng(0).normal(size=(3, _FEATURE_DIM)).astype("float32")
_BIAS = np.linspace(-0.5, 0.5, _FEATURE_DIM).astype("float32")


class _TinyFeatureVectorModule(tf.Module):
    """A TF2 image feature-vector module as TF-Hub publishes them: float32
    [N, H, W, 3] images in [0, 1] -> [N, D] features."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(_KERNEL)
        self.bias = tf.Variable(_BIAS)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        return tf.tanh(tf.matmul(tf.reduce_mean(images, axis=[1, 2]), self.kernel) + self.bias)


class _FeatureMapModule(tf.Module):
    """Returns [N, H, W, 3]: not a feature-vector module."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        return images


def _expected_features(pixels: np.ndarray) -> np.ndarray:
    """What the tiny module gives for pixels in [0, 255] once scaled to [0, 1]."""
    return np.tanh((pixels / 255.0).mean(axis=(1, 2)) @ _KERNEL + _BIAS)


def _pixels(size: int = _SIZE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (_BATCH, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def tf2_module(tmp_path_factory):
    """(folder, module): a TF2 SavedModel module and the tf.Module it was saved from."""
    folder = str(tmp_path_factory.mktemp("tf2_module"))
    module = _TinyFeatureVectorModule()
    tf.saved_model.save(module, folder)
    return folder, module


@pytest.fixture(scope="module")
def tf1_module_dir(tmp_path_factory):
    """A TF1 Hub format module (the remote-sensing ResNet-50s' format): a "default"
    signature from "images" to "default" under the empty tag set, and tfhub_module.pb."""
    folder = os.path.join(str(tmp_path_factory.mktemp("tf1")), "module")
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        kernel = tf.compat.v1.get_variable("kernel", initializer=_KERNEL)
        bias = tf.compat.v1.get_variable("bias", initializer=_BIAS)
        features = tf.tanh(tf.matmul(tf.reduce_mean(images, axis=[1, 2]), kernel) + bias)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(folder)
            signature = tf.compat.v1.saved_model.predict_signature_def(
                {"images": images}, {"default": features})
            builder.add_meta_graph_and_variables(session, [],
                                                 signature_def_map={"default": signature})
            builder.save()
    # A serialized ModuleDef {format: FORMAT_V3}, the marker of the TF1 Hub format.
    with open(os.path.join(folder, "tfhub_module.pb"), "wb") as f:
        f.write(b"\x08\x03")
    return folder


def test_tf2_module_features_are_the_module_on_pixels_over_255(tf2_module):
    folder, module = tf2_module
    encoder = build_image_encoder("tfhub:" + folder, image_size=_SIZE)
    pixels = _pixels()

    features = np.asarray(encoder(pixels))

    assert isinstance(encoder, TfHubImageEncoder)
    assert encoder.input_shape == (None, _SIZE, _SIZE, 3)
    assert encoder.output_shape == (None, _FEATURE_DIM)
    np.testing.assert_allclose(features, module(tf.constant(pixels / 255.0)).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features, _expected_features(pixels), rtol=1e-5, atol=1e-6)
    assert encoder.get_config() == {"name": "tfhub_image_encoder", "trainable": True,
                                    "handle": folder, "image_size": _SIZE}


def test_tf1_hub_format_module_is_called_through_its_default_signature(tf1_module_dir):
    encoder = build_image_encoder("tfhub:" + tf1_module_dir, image_size=_SIZE)
    pixels = _pixels()

    assert encoder.output_shape == (None, _FEATURE_DIM)
    np.testing.assert_allclose(np.asarray(encoder(pixels)), _expected_features(pixels),
                               rtol=1e-5, atol=1e-6)


def test_any_image_size_when_image_size_is_none(tf2_module):
    encoder = build_image_encoder("tfhub:" + tf2_module[0], image_size=None)
    for size in (8, 12):
        pixels = _pixels(size)
        np.testing.assert_allclose(np.asarray(encoder(pixels)), _expected_features(pixels),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module_format", ["tf2", "tf1"])
def test_works_in_a_functional_graph_and_a_tf_function(tf2_module, tf1_module_dir, module_format):
    folder = tf2_module[0] if module_format == "tf2" else tf1_module_dir
    encoder = build_image_encoder("tfhub:" + folder, image_size=_SIZE)
    images = keras.Input(shape=(_SIZE, _SIZE, 3))
    head = keras.layers.Dense(2, name="head")
    model = keras.Model(images, head(encoder(images)))
    pixels = _pixels()

    in_graph = tf.function(lambda x: model(x, training=False))(tf.constant(pixels)).numpy()

    kernel, bias = (np.asarray(weight) for weight in head.weights)
    np.testing.assert_allclose(in_graph, _expected_features(pixels) @ kernel + bias,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model(pixels)), in_graph, rtol=1e-6, atol=1e-6)


def test_mixed_precision_policy_keeps_the_module_in_float32(tf2_module):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        encoder = build_image_encoder("tfhub:" + tf2_module[0], image_size=_SIZE)
    finally:
        keras.config.set_dtype_policy(previous)
    pixels = _pixels()

    features = encoder(pixels)

    assert features.dtype == tf.float32
    np.testing.assert_allclose(np.asarray(features), _expected_features(pixels),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module_format", ["tf2", "tf1"])
def test_saved_model_and_keras_export_keep_the_module_variables(
        tmp_path, tf2_module, tf1_module_dir, module_format):
    # A private copy of the module, deleted before reloading: the exports must hold
    # the module's variables themselves.
    source = str(tmp_path / "module")
    shutil.copytree(tf2_module[0] if module_format == "tf2" else tf1_module_dir, source)
    encoder = build_image_encoder("tfhub:" + source, image_size=_SIZE)
    images = keras.Input(shape=(_SIZE, _SIZE, 3))
    model = keras.Model(images, keras.layers.Dense(2)(encoder(images)))
    pixels = _pixels()
    expected = np.asarray(model(pixels))
    spec = [tf.TensorSpec([None, _SIZE, _SIZE, 3], tf.float32)]

    holder = tf.Module()
    holder.model = model
    holder.encode = tf.function(lambda x: model(x, training=False), input_signature=spec)
    tf.saved_model.save(holder, str(tmp_path / "saved_model"))
    # As the serving export does: no track(), the archive keeps what endpoints use.
    archive = keras.export.ExportArchive()
    archive.add_endpoint("encode", lambda x: model(x, training=False), input_signature=spec)
    archive.write_out(str(tmp_path / "export"), verbose=False)
    shutil.rmtree(source)

    for folder in ("saved_model", "export"):
        reloaded = tf.saved_model.load(str(tmp_path / folder))
        np.testing.assert_allclose(reloaded.encode(tf.constant(pixels)).numpy(), expected,
                                   rtol=1e-6, atol=1e-6)


def test_loading_a_local_module_does_not_import_tf_keras(tf2_module):
    # In a fresh interpreter: other tests (or keras-hub) may have imported tf_keras here.
    code = ("import sys\n"
            "from rs_hashing.encoders.image_encoder import build_image_encoder\n"
            f"encoder = build_image_encoder('tfhub:' + {tf2_module[0]!r}, image_size={_SIZE})\n"
            "print(encoder.output_shape[-1])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tf_keras'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=testing.REPO_ROOT)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == [str(_FEATURE_DIM), "[]"], result.stdout


def test_missing_folder_is_named(tmp_path):
    missing = str(tmp_path / "no_module")
    with pytest.raises(FileNotFoundError, match=f"TF-Hub module folder not found: {missing}"):
        build_image_encoder("tfhub:" + missing, image_size=_SIZE)


def test_folder_without_a_saved_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="neither saved_model.pb nor saved_model.pbtxt"):
        build_image_encoder("tfhub:" + str(tmp_path), image_size=_SIZE)


def test_output_that_is_not_a_feature_vector_is_refused(tmp_path):
    tf.saved_model.save(_FeatureMapModule(), str(tmp_path))
    with pytest.raises(ValueError, match=r"not an image feature-vector module.*\[1, 16, 16, 3\]"):
        build_image_encoder("tfhub:" + str(tmp_path), image_size=_SIZE)


@pytest.mark.parametrize("kwargs, message", [
    ({"weights": None}, "weights must be 'default'"),
    ({"weights": "model.weights.h5"}, "weights must be 'default'"),
    ({"feature_dim": 7}, "feature_dim=7 .* 5-d"),
    ({"image_size": 0}, "image_size must be a positive int"),
])
def test_bad_arguments_are_named(tf2_module, kwargs, message):
    arguments = {"image_size": _SIZE, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_image_encoder("tfhub:" + tf2_module[0], **arguments)
