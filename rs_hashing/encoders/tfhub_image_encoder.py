"""A TF-Hub image feature-vector module as a Keras 3 image encoder.

`TfHubImageEncoder` backs `--image_encoder=tfhub:<handle or folder>`. It loads
the module as a plain TensorFlow object (no `hub.KerasLayer`, which is a
tf-keras (Keras 2) layer and cannot sit in a Keras 3 model) and calls it from a
Keras 3 layer that holds it as an attribute, so the module's variables are
tracked: `tf.saved_model.save` and `keras.export.ExportArchive` of a model that
contains the encoder save them.

Two module formats are accepted, as `hub.load` accepts them:

* TF2 SavedModel (`tf.saved_model.save` of a callable object): called as
  `module(images)`, e.g. the `google/imagenet/*/feature_vector` TF2 modules.
* TF1 Hub format (a folder with `tfhub_module.pb`): its `"default"` signature,
  `images` in, `"default"` out, e.g. the remote-sensing ResNet-50s of Neumann
  et al. (`google/remote_sensing/{bigearthnet,eurosat,resisc45,...}-resnet50`).

Both follow TF-Hub's image feature-vector convention: float32 RGB in [0, 1],
shape `(N, H, W, 3)`, to features `(N, D)`. This project's encoders take
pixels in [0, 255], so the encoder divides by 255 first.

A local folder is read with `tf.saved_model.load` (what `hub.load` does for a
folder). Only a remote handle (a URL such as `https://tfhub.dev/...` or a
Kaggle model URL, or `gs://...`) imports `tensorflow_hub`, whose `hub.load`
downloads and caches it (under `$TFHUB_CACHE_DIR`). tensorflow-hub 0.16
imports tf-keras when it is imported, even though nothing here uses it; a local
folder therefore never loads tf-keras.
"""

import os
from typing import Any, Callable

import keras
import tensorflow as tf

# The TF1 Hub format marks its folders with this file (`hub.load` looks for it).
_TF1_HUB_MARKER = "tfhub_module.pb"
# The image feature-vector signature of TF1 Hub modules.
_TF1_SIGNATURE = "default"
_TF1_OUTPUT = "default"
# Side of the probe image when the encoder accepts any size.
_PROBE_SIZE = 224


def _is_remote(handle: str) -> bool:
    return "://" in handle


def _load_module(handle: str) -> Any:
    """Loads the module object of a local folder or a remote handle."""
    folder = os.path.expanduser(handle)
    if os.path.isdir(folder):
        has_graph = any(os.path.isfile(os.path.join(folder, name))
                        for name in ("saved_model.pb", "saved_model.pbtxt"))
        if not has_graph:
            raise ValueError(
                f"{handle}: not a TF-Hub module folder (it holds neither saved_model.pb nor "
                "saved_model.pbtxt); unpack the module's .tar.gz into it.")
        # What hub.load does for a folder, without importing tensorflow_hub (and with
        # it tf-keras). TF1 Hub modules keep their inference graph under the empty tag set.
        tags = [] if os.path.isfile(os.path.join(folder, _TF1_HUB_MARKER)) else None
        return tf.saved_model.load(folder, tags=tags)
    if not _is_remote(handle):
        raise FileNotFoundError(f"TF-Hub module folder not found: {handle}")
    try:
        import tensorflow_hub as hub  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ModuleNotFoundError(
            f"Loading the TF-Hub handle {handle!r} needs the package 'tensorflow-hub' "
            "(`pip install tensorflow-hub`), or pass a local module folder instead.") from err
    try:
        return hub.load(handle)
    except Exception as err:  # Any download or unpacking failure.
        raise ConnectionError(
            f"Could not download or load the TF-Hub module {handle!r} "
            f"({type(err).__name__}: {err}). Without internet access, download it where "
            "the hub is reachable (`tensorflow_hub.resolve(handle)` downloads it and returns "
            "the cached folder), copy that folder here and pass "
            "--image_encoder=tfhub:<folder>."
        ) from err


def _feature_function(module: Any, handle: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The module's `images [N, H, W, 3] in [0, 1] -> output` function."""
    if callable(module):
        return lambda images: module(images)
    signatures = getattr(module, "signatures", {})
    if _TF1_SIGNATURE not in signatures:
        raise ValueError(
            f"{handle}: not an image feature-vector module: the loaded object is not "
            f"callable and has no {_TF1_SIGNATURE!r} signature (signatures: "
            f"{sorted(signatures)}).")
    signature = signatures[_TF1_SIGNATURE]
    input_names = sorted(signature.structured_input_signature[1])
    if len(input_names) != 1:
        raise ValueError(
            f"{handle}: the {_TF1_SIGNATURE!r} signature takes {input_names}; an image "
            "feature-vector module takes one input, the images.")
    input_name = input_names[0]
    return lambda images: signature(**{input_name: images})


def _features_of(outputs: Any, handle: str) -> tf.Tensor:
    """The feature tensor among a module's outputs (a tensor, or a dict with "default")."""
    if isinstance(outputs, dict):
        if _TF1_OUTPUT not in outputs:
            raise ValueError(
                f"{handle}: the module returns a dict without a {_TF1_OUTPUT!r} entry "
                f"(keys: {sorted(outputs)}); expected image feature vectors.")
        return outputs[_TF1_OUTPUT]
    return outputs


class _HubFeatures(keras.layers.Layer):
    """Calls a loaded TF-Hub module on [0, 255] pixels; frozen, always in float32.

    The module is an attribute, so TensorFlow's object graph (hence
    `tf.saved_model.save` and Keras export) tracks its variables. They are
    TensorFlow variables, not Keras ones, so Keras' `weights` lists and
    `count_params()` do not show them.
    """

    def __init__(self, module: Any, features_fn: Callable, feature_dim: int, handle: str,
                 **kwargs: Any):
        # The module is a fixed float32 graph, whatever the global dtype policy.
        super().__init__(trainable=False, dtype="float32", **kwargs)
        self.module = module
        self._features_fn = features_fn
        self._feature_dim = feature_dim
        self._handle = handle

    def call(self, images: tf.Tensor) -> tf.Tensor:
        # TF-Hub image modules take [0, 1] inputs; our pipeline gives [0, 255].
        unit_images = tf.cast(images, tf.float32) * (1.0 / 255.0)
        return _features_of(self._features_fn(unit_images), self._handle)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self._feature_dim)


class TfHubImageEncoder(keras.Model):
    """TF-Hub image feature-vector module: [0, 255] pixels -> features (N, D).

    Input: float RGB pixels in [0, 255], shape `(N, S, S, 3)`; they are divided
    by 255 inside the model, as TF-Hub image modules expect [0, 1]. Output: the
    module's feature vectors, float32 `(N, D)`; D is read by running the
    module once on a black image when the encoder is built. The module is used
    for inference only and is never trained.

    Not registered for Keras deserialisation: rebuilding it from a config would
    load and run the graph of whatever module the config names.

    Args:
        handle: a local module folder (TF2 SavedModel or TF1 Hub format,
            e.g. an unpacked `.tar.gz` from tfhub.dev / Kaggle Models), or a
            remote handle (`https://tfhub.dev/...`, a Kaggle model URL,
            `gs://...`) that `tensorflow_hub.load` downloads and caches.
        image_size: fixed input height and width, or `None` for any size the
            module accepts (the remote-sensing ResNet-50s expect 224).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Raises:
        ValueError: a bad argument, a folder that holds no SavedModel, or a
            module that is not an image feature-vector module (no callable or
            "default" signature, refuses `image_size` images, or returns
            anything but `(N, D)` features).
        FileNotFoundError: `handle` is neither an existing folder nor a URL.
        ConnectionError: a remote handle could not be downloaded.
    """

    def __init__(self, handle: str | os.PathLike, image_size: int | None = 224, **kwargs: Any):
        if keras.backend.backend() != "tensorflow":
            raise ValueError("TfHubImageEncoder needs the TensorFlow Keras backend; got "
                             f"{keras.backend.backend()!r}.")
        if not isinstance(handle, (str, os.PathLike)) or not os.fspath(handle):
            raise ValueError(f"handle must be a module folder or URL; got {handle!r}.")
        handle = os.fspath(handle)
        if image_size is not None and (
                not isinstance(image_size, int) or isinstance(image_size, bool)
                or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None; got {image_size!r}.")
        module = _load_module(handle)
        features_fn = _feature_function(module, handle)
        feature_dim = _probe_feature_dim(features_fn, handle, image_size or _PROBE_SIZE)
        kwargs.setdefault("name", "tfhub_image_encoder")

        # === Functional model ===
        images = keras.Input(shape=(image_size, image_size, 3), name="images")
        features = _HubFeatures(module, features_fn, feature_dim, handle,
                                name="tfhub_module")(images)
        super().__init__(inputs=images, outputs=features, **kwargs)

        # === Config ===
        self.handle = handle
        self.image_size = image_size
        self.feature_dim = feature_dim

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "handle": self.handle,
            "image_size": self.image_size,
        }


def _probe_feature_dim(features_fn: Callable, handle: str, size: int) -> int:
    """D, from the module's output on one black `size`x`size` image."""
    try:
        features = _features_of(features_fn(tf.zeros([1, size, size, 3], tf.float32)), handle)
    except (TypeError, ValueError, tf.errors.InvalidArgumentError) as err:
        raise ValueError(
            f"{handle}: the module does not accept float32 images of shape "
            f"[N, {size}, {size}, 3] ({type(err).__name__}: {err}); set image_size to the "
            "size it expects.") from err
    if features.shape.rank != 2 or features.shape[0] != 1:
        raise ValueError(
            f"{handle}: not an image feature-vector module: one image gives an output of "
            f"shape {features.shape.as_list()}, expected [1, D].")
    return int(features.shape[1])
