"""Tests for the image-encoder factory and the tiny test CNN."""

import keras
import numpy as np
import pytest

from rs_hashing.encoders import image_encoder
from rs_hashing.encoders.image_encoder import (
    IMAGE_ENCODER_NAMES,
    build_image_encoder,
    image_encoder_feature_dim,
    preprocess_image_size,
)
from rs_hashing.encoders.tiny_cnn import TinyCNN

_BATCH, _SIZE = 4, 16


def _images(size: int = _SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (_BATCH, size, size, 3)).astype("float32")


# --- TinyCNN -----------------------------------------------------------------

def test_tiny_cnn_pools_to_feature_dim():
    model = TinyCNN(feature_dim=8, image_size=_SIZE)
    assert model.input_shape == (None, _SIZE, _SIZE, 3)
    assert model(_images()).shape == (_BATCH, 8)


def test_tiny_cnn_scales_pixels_to_unit_range_and_black_gives_zero():
    model = TinyCNN(feature_dim=8)
    np.testing.assert_allclose(
        np.asarray(model.get_layer("normalize")(np.full((1, 1, 1, 3), 255.0, "float32"))), 1.0)
    # Zero input, zero biases, ReLU: every feature is exactly 0.
    np.testing.assert_array_equal(np.asarray(model(np.zeros((2, 8, 8, 3), "float32"))), 0.0)


def test_tiny_cnn_get_config_round_trip():
    model = TinyCNN(feature_dim=8, image_size=_SIZE, hidden_dim=4, name="tiny")
    config = model.get_config()
    assert config == {"name": "tiny", "trainable": True, "feature_dim": 8,
                      "image_size": _SIZE, "hidden_dim": 4}
    assert TinyCNN.from_config(config).count_params() == model.count_params()


@pytest.mark.parametrize("kwargs", [{"feature_dim": 0}, {"hidden_dim": 2.5},
                                    {"image_size": -1}, {"feature_dim": True}])
def test_tiny_cnn_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TinyCNN(**kwargs)


# --- Factory -----------------------------------------------------------------

def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown image encoder 'vgg16'.*efficientnet_lite0"):
        build_image_encoder("vgg16")
    with pytest.raises(ValueError, match="Unknown image encoder"):
        preprocess_image_size("resnet")


def test_sizes_and_dims_per_name():
    assert all(preprocess_image_size(name) == 224 for name in IMAGE_ENCODER_NAMES)
    assert image_encoder_feature_dim("efficientnet_lite0") == 1280
    assert image_encoder_feature_dim("resnet18") == 512
    assert image_encoder_feature_dim("resnet152") == 2048
    assert image_encoder_feature_dim("tiny_cnn") == 16
    assert image_encoder_feature_dim("tiny_cnn", feature_dim=8) == 8


@pytest.mark.parametrize("kwargs, error, message", [
    ({"name": "resnet18", "feature_dim": 128}, ValueError, "feature_dim=128"),
    ({"name": "tiny_cnn", "image_size": 0}, ValueError, "image_size"),
    ({"name": "tiny_cnn", "weights": "imagenet"}, ValueError, "no pretrained weights"),
    ({"name": "tiny_cnn", "weights": "/no/such/tiny.weights.h5"}, FileNotFoundError, "tiny"),
    ({"name": "efficientnet_b0", "weights": "b0.bin"}, ValueError, r"\.h5 file"),
    ({"name": "efficientnet_b0", "weights": "/no/such/b0.h5"}, FileNotFoundError, "b0.h5"),
    ({"name": "resnet50", "weights": "/no/such/preset_dir"}, FileNotFoundError, "preset_dir"),
    ({"name": "resnet50", "weights": "/no/such/r50.weights.h5"}, FileNotFoundError, "r50"),
])
def test_factory_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        build_image_encoder(**kwargs)


def test_tiny_cnn_by_name_and_weights_round_trip(tmp_path):
    model = build_image_encoder("tiny_cnn", weights=None, image_size=_SIZE, feature_dim=8)
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)

    restored = build_image_encoder("tiny_cnn", weights=path, image_size=_SIZE, feature_dim=8)

    assert isinstance(restored, TinyCNN)
    images = _images()
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(restored(images)))


def test_efficientnet_lite0_by_name_random_weights():
    model = build_image_encoder("efficientnet_lite0", weights=None, image_size=32)
    assert model(_images(32)).shape == (_BATCH, 1280)


def test_efficientnet_b0_random_weights_pools_1280_features():
    model = build_image_encoder("efficientnet_b0", weights=None, image_size=32)
    assert model(_images(32)).shape == (_BATCH, 1280)


def test_resnet18_random_weights_pools_512_features():
    model = build_image_encoder("resnet18", weights=None, image_size=32)
    assert model(_images(32)).shape == (_BATCH, 512)


def _tiny_resnet_preset(preset_dir) -> keras.Model:
    """Saves a small ResNet backbone as a local keras-hub preset directory."""
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block")
    backbone.save_to_preset(str(preset_dir))
    return backbone


def test_resnet_from_local_preset_dir_uses_imagenet_normalisation(tmp_path):
    backbone = _tiny_resnet_preset(tmp_path)

    model = build_image_encoder("resnet18", weights=str(tmp_path), image_size=_SIZE)

    images = _images()
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    expected = np.asarray(backbone((images / 255.0 - mean) / std)).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(model(images)), expected, atol=1e-4, rtol=1e-4)


def test_resnet_from_local_preset_dir_uses_its_image_converter(tmp_path):
    import keras_hub

    backbone = _tiny_resnet_preset(tmp_path)
    keras_hub.layers.ResNetImageConverter(scale=0.5, offset=-1.0).save_to_preset(str(tmp_path))

    model = build_image_encoder("resnet50", weights=str(tmp_path), image_size=_SIZE)

    images = _images()
    expected = np.asarray(backbone(images * 0.5 - 1.0)).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(model(images)), expected, atol=1e-4, rtol=1e-4)


def test_resnet_unreachable_hub_says_how_to_pass_a_local_dir(monkeypatch):
    import keras_hub

    requested = []

    def offline(preset, *args, **kwargs):
        requested.append(preset)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(keras_hub.models.ResNetBackbone, "from_preset", offline)
    with pytest.raises(ConnectionError, match=r"unreachable.*pass weights=DIR"):
        build_image_encoder("resnet18")
    assert requested == ["resnet_18_imagenet"]


def test_efficientnet_b0_unreachable_hub_says_how_to_pass_a_file(monkeypatch):
    def offline(**kwargs):
        assert kwargs["weights"] == "imagenet" and kwargs["pooling"] == "avg"
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(image_encoder.keras.applications, "EfficientNetB0", offline)
    with pytest.raises(ConnectionError, match=r"unreachable.*weights='/path/to/"):
        build_image_encoder("efficientnet_b0")


@pytest.mark.slow
def test_resnet18_backbone_weights_file_round_trip(tmp_path):
    """A bare ResNetBackbone .weights.h5 (e.g. a preset's model.weights.h5) loads."""
    model = build_image_encoder("resnet18", weights=None, image_size=32)
    backbone = model.layers[2]
    path = str(tmp_path / "model.weights.h5")
    backbone.save_weights(path)

    restored = build_image_encoder("resnet18", weights=path, image_size=32)

    images = _images(32)
    np.testing.assert_allclose(np.asarray(model(images)), np.asarray(restored(images)),
                               atol=1e-6)
