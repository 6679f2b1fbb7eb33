"""SavedModel export for TF Serving: raw captions and images in, hash codes out.

`export_savedmodel(hashing_model, export_base)` writes `export_base/<model_name>/<version>/`,
the layout TF Serving polls, with three `keras.export.ExportArchive` endpoints, each
also a SignatureDef of the same name:

    encode_text          text         tf.string [N]           (also serving_default)
    encode_image         image_bytes  tf.string [N]           JPEG/PNG/GIF/BMP, any size
    encode_image_pixels  image        uint8 [N, H, W, 3]      any H, W

and the same three outputs from each:

    code    int8 [N, K]       +1/-1, sign(hash) with sign(0) = +1
    packed  uint8 [N, K / 8]  numpy.packbits(code > 0): bit 0 of the code is the most
                              significant bit of byte 0
    hash    float32 [N, K]    the continuous codes in (-1, 1)

Captions are tokenised inside the graph (keras-hub's BERT tokenizer on TensorFlow Text
ops); images are decoded and resized inside the graph by `features.image_pipeline`,
the function that made the training features, so serving sees what training saw.
Loading the SavedModel in Python needs `import tensorflow_text` first (it registers the
tokenizer's ops); see docs/serving.md for the model server.

The version folder is written under a temporary name that is not an integer (which TF
Serving ignores) and renamed when complete, so a polling server never sees half a
model. `assets.extra/tf_serving_warmup_requests` holds one PredictRequest per signature
(TF Serving replays them at load, before the version takes traffic) and
`assets.extra/rs_hashing_export.json` records what was exported from which run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rs_hashing.hashing_model import HashingModel
from rs_hashing.features.image_pipeline import decode_image, radiometry_of, resize_image

DEFAULT_MODEL_NAME = "rs_hashing"
SIGNATURES = ("encode_text", "encode_image", "encode_image_pixels")
OUTPUTS = ("code", "packed", "hash")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
INFO_FILE = os.path.join("assets.extra", "rs_hashing_export.json")
WARMUP_CAPTION = "many green trees are around a white building near a road ."
# TensorFlow Text ops the in-graph tokenizer uses; a model server must link them.
TOKENIZER_OPS = ("CaseFoldUTF8", "NormalizeUTF8", "RegexSplitWithOffsets",
                 "FastWordpieceTokenizeWithOffsets")

# Weight of each bit inside its byte, most significant first (numpy.packbits' order).
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def code_outputs(hash_codes: tf.Tensor, bits: int) -> dict[str, tf.Tensor]:
    """{code, packed, hash} from continuous codes [N, bits].

    Only ops that TFLite has as builtins are used (an int8 negation is not one), so
    the TFLite export builds its outputs with this same function.
    """
    if bits % 8:
        raise ValueError(f"bits={bits} must be a multiple of 8 to pack codes into bytes")
    hash_codes = tf.cast(hash_codes, tf.float32)
    positive = tf.cast(hash_codes >= 0.0, tf.int32)
    code = tf.cast(2 * positive - 1, tf.int8)
    groups = tf.reshape(positive, [-1, bits // 8, 8])
    packed = tf.reduce_sum(groups * tf.constant(_BIT_WEIGHTS, tf.int32), axis=-1)
    return {"code": code, "packed": tf.cast(packed, tf.uint8), "hash": hash_codes}


def input_specs(name: str) -> list[tf.TensorSpec]:
    """The input signature of one endpoint (a list with one named TensorSpec)."""
    specs = {
        "encode_text": tf.TensorSpec([None], tf.string, name="text"),
        "encode_image": tf.TensorSpec([None], tf.string, name="image_bytes"),
        "encode_image_pixels": tf.TensorSpec([None, None, None, 3], tf.uint8, name="image"),
    }
    if name not in specs:
        raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(SIGNATURES)}")
    return [specs[name]]


def _checked(tensor: tf.Tensor, spec: tf.TensorSpec) -> tf.Tensor:
    # A client of the model server can feed any shape: the placeholder's static shape
    # is not enforced at run time, and a wrong rank or channel count would fail deep in
    # the encoder with a message about convolutions. EnsureShape fails at once, naming
    # the input, the shape given and the shape expected.
    return tf.ensure_shape(tensor, spec.shape, name=f"check_{spec.name}")


def build_export_archive(hashing_model: HashingModel) -> keras.export.ExportArchive:
    """An ExportArchive with the three endpoints (encode_text first, so it is also
    serving_default)."""
    bits, size, model = hashing_model.bits, hashing_model.image_size, hashing_model.heads
    image_encoder, text_encoder = hashing_model.image_encoder, hashing_model.text_encoder

    def image_outputs(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        features = image_encoder(pixels, training=False)
        return code_outputs(model.encode_image(features, training=False), bits)

    def encode_text(text: tf.Tensor) -> dict[str, tf.Tensor]:
        text = _checked(text, input_specs("encode_text")[0])
        return code_outputs(model.encode_text(text_encoder(text), training=False), bits)

    def encode_image(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        image_bytes = _checked(image_bytes, input_specs("encode_image")[0])
        # Each image is decoded and resized on its own (sizes differ), with the
        # training pipeline's functions, then the batch runs through the encoder.
        radiometry = radiometry_of(hashing_model.features)  # 16-bit PNGs, as in training
        pixels = tf.map_fn(lambda data: resize_image(decode_image(data, radiometry), size), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return image_outputs(pixels)

    def encode_image_pixels(image: tf.Tensor) -> dict[str, tf.Tensor]:
        image = _checked(image, input_specs("encode_image_pixels")[0])
        return image_outputs(resize_image(image, size))

    # No explicit track(): the archive saves the variables the endpoints use, once;
    # tracking the layers as well would store every weight a second time.
    archive = keras.export.ExportArchive()
    for name, fn in (("encode_text", encode_text), ("encode_image", encode_image),
                     ("encode_image_pixels", encode_image_pixels)):
        archive.add_endpoint(name, fn, input_signature=input_specs(name))
    return archive


def next_version(model_dir: str) -> int:
    """1 + the largest integer-named folder in `model_dir` (1 when there is none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(name) for name in os.listdir(model_dir)
                if re.fullmatch(r"\d+", name) and os.path.isdir(os.path.join(model_dir, name))]
    return max(versions, default=0) + 1


def _example_image(size: int) -> np.ndarray:
    """A smooth synthetic RGB image uint8 [size, size, 3] for warm-up requests."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    return np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)),
                     np.full((size, size), 96.0)], axis=-1).astype(np.uint8)


def example_inputs(image_size: int) -> dict[str, dict[str, np.ndarray]]:
    """One small valid request body per signature (the warm-up requests)."""
    image = _example_image(image_size)
    encoded = [tf.io.encode_jpeg(image).numpy(), tf.io.encode_png(image).numpy()]
    return {
        "encode_text": {"text": np.array([WARMUP_CAPTION.encode("utf-8")], dtype=object)},
        "encode_image": {"image_bytes": np.array(encoded, dtype=object)},
        "encode_image_pixels": {"image": image[None]},
    }


def warmup_records(model_name: str, image_size: int) -> list[bytes]:
    """Serialized PredictionLog records, one PredictRequest per signature.

    Raises:
        ImportError: `tensorflow-serving-api` (the `serving` extra) is not installed.
    """
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError as e:
        raise ImportError(
            "writing the TF Serving warm-up file needs the package tensorflow-serving-api "
            "(pip install 'rs_hashing[serving]'), or export with warmup=False") from e
    records = []
    for signature, inputs in example_inputs(image_size).items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def export_info(hashing_model: HashingModel, model_name: str, version: int,
                source: str | None) -> dict[str, Any]:
    """What `assets.extra/rs_hashing_export.json` records."""
    return {
        "model_name": model_name,
        "version": version,
        "source_run": source,
        "bits": hashing_model.bits,
        "image_size": hashing_model.image_size,
        "signatures": {name: {spec.name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
                              for spec in input_specs(name)} for name in SIGNATURES},
        "serving_default": SIGNATURES[0],
        "outputs": list(OUTPUTS),
        "tokenizer_ops": list(TOKENIZER_OPS),
        "features": dataclasses.asdict(hashing_model.features),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def export_savedmodel(hashing_model: HashingModel, export_base: str,
                      model_name: str = DEFAULT_MODEL_NAME, version: int | None = None,
                      warmup: bool = True, source: str | None = None) -> str:
    """Writes `export_base/model_name/version/` atomically and returns its path.

    Args:
        hashing_model: the trained run (`HashingModel.from_run`).
        export_base: the folder a model server is pointed at (created if needed).
        model_name: the model's folder (and the name in the warm-up requests).
        version: an integer version; None takes the next free one.
        warmup: write `assets.extra/tf_serving_warmup_requests` (needs
            tensorflow-serving-api).
        source: the run folder, recorded in the export info.

    Raises:
        ValueError: a bad model name or version.
        FileExistsError: that version already exists.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name) or model_name.startswith("."):
        raise ValueError(f"model_name={model_name!r}: use letters, digits, '_', '-' and '.'")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ValueError(f"version={version!r} must be a non-negative integer")
    hashing_model.check_exportable()
    model_dir = os.path.join(export_base, model_name)
    os.makedirs(model_dir, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} already exists; pick another version or leave it unset")
    records = warmup_records(model_name, hashing_model.image_size) if warmup else []
    # A name that is not an integer: TF Serving only loads integer-named versions.
    staging = tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir)
    try:
        build_export_archive(hashing_model).write_out(staging, verbose=False)
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        if records:
            with tf.io.TFRecordWriter(os.path.join(staging, WARMUP_FILE)) as writer:
                for record in records:
                    writer.write(record)
        with open(os.path.join(staging, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(export_info(hashing_model, model_name, version, source), f, indent=2)
            f.write("\n")
        # mkdtemp makes the folder private (0700); a server running as another user
        # must be able to read the model.
        os.chmod(staging, 0o755)
        if os.path.exists(final):
            raise FileExistsError(f"{final} appeared while exporting (another exporter?)")
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
