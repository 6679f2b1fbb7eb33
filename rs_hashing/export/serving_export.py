"""SavedModel export for TF Serving: raw captions and images in, hash codes out.

`export_savedmodel(hashing_model, export_base)` writes `export_base/<model_name>/<version>/`,
the layout TF Serving polls, with three `keras.export.ExportArchive` endpoints, each
also a SignatureDef of the same name:

    encode_text          text         tf.string [N]           UTF-8 (also serving_default)
    encode_image         image_bytes  tf.string [N]           JPEG/PNG/GIF/BMP
    encode_image_pixels  image        uint8 [N, H, W, 3]      any H, W

and the same three outputs from each:

    code    int8 [N, K]       +1/-1, sign(hash) with sign(0) = +1
    packed  uint8 [N, K / 8]  numpy.packbits(code > 0): bit 0 of the code is the most
                              significant bit of byte 0
    hash    float32 [N, K]    the continuous codes in (-1, 1)

Every request is checked before any heavy work, each refusal an InvalidArgument whose
message names the item or the limit (both limits are set at export and recorded in the
export info):

    empty batch: send at least one text in text            (image in image_bytes, image)
    batch of 300 items in image_bytes is above the limit of 256 (max_batch); split it
    text[2] is not valid UTF-8
    image_bytes[3] cannot be decoded (not a readable JPEG, PNG, GIF or BMP image)
    image_bytes[1]: 12000 x 12000 px is above the limit of 50,000,000 px for one image (max_pixels)
    image: 9000 x 9000 px per image is above the limit of 50,000,000 px for one image (max_pixels)

An image's size is read from its header and checked before it is decoded, and images
are decoded one at a time, so a request's memory is bounded by `max_pixels` (and the
request itself). A failure to decode one item cannot be caught by graph ops; the images
are therefore decoded in an in-graph tf.data pipeline that drops the failures
(`ignore_errors`), and the first missing index is reported.

The endpoints encode through `HashingModel`'s graph functions, so a run that fine-tuned
the tops of its encoders (tower mode) serves its tuned tops. Captions are tokenised
inside the graph (keras-hub's BERT tokenizer on TensorFlow Text ops); images are decoded
and resized inside the graph by `features.image_pipeline`, the function that made the
training features, so serving sees what training saw.
Loading the SavedModel in Python needs `import tensorflow_text` first (it registers the
tokenizer's ops); see docs/serving.md for the model server.

The version folder is written under a temporary name that is not an integer (which TF
Serving ignores), `.<version>.partial-<pid>@<host>.<random>`, and renamed when complete,
so a polling server never sees half a model. A failed write (a full disk: TensorFlow's
OutOfRangeError, or an OSError) removes it and raises `ExportWriteError`, one line that
names the version folder; the folders of killed exports (their process is gone) are
removed by the next export into the same model folder.
`assets.extra/tf_serving_warmup_requests` holds one PredictRequest per signature (TF
Serving replays them at load, before the version takes traffic) and
`assets.extra/rs_hashing_export.json` records what was exported from which run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import tempfile
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rs_hashing.hashing_model import HashingModel
from rs_hashing.features.image_pipeline import (ENCODED_FORMATS, MAX_IMAGE_PIXELS, check_pixel_count,
                                                decode_image, header_size, radiometry_of, resize_image)

DEFAULT_MODEL_NAME = "rs_hashing"
SIGNATURES = ("encode_text", "encode_image", "encode_image_pixels")
OUTPUTS = ("code", "packed", "hash")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
INFO_FILE = os.path.join("assets.extra", "rs_hashing_export.json")
WARMUP_CAPTION = "many green trees are around a white building near a road ."
# TensorFlow Text ops the in-graph tokenizer uses; a model server must link them.
TOKENIZER_OPS = ("CaseFoldUTF8", "NormalizeUTF8", "RegexSplitWithOffsets",
                 "FastWordpieceTokenizeWithOffsets")

DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
DEFAULT_MAX_BATCH = 256
# When this module was loaded: staging folders without a process id (older exports)
# that were last changed before then are left from killed exports.
_LOADED_AT = time.time()

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


class ExportWriteError(OSError, ValueError):
    """The export folder could not be written (a full disk, a file size limit); nothing
    was left behind. A ValueError too, so that commands report it as one line."""


def _checked(tensor: tf.Tensor, spec: tf.TensorSpec) -> tf.Tensor:
    # A client of the model server can feed any shape: the placeholder's static shape
    # is not enforced at run time, and a wrong rank or channel count would fail deep in
    # the encoder with a message about convolutions. EnsureShape fails at once, naming
    # the input, the shape given and the shape expected.
    return tf.ensure_shape(tensor, spec.shape, name=f"check_{spec.name}")


def _after(checks: list, tensor: tf.Tensor) -> tf.Tensor:
    """`tensor`, usable only once the assert ops `checks` passed: everything computed
    from it waits for them, so the first failing check is the error reported."""
    with tf.control_dependencies(checks):
        return tf.identity(tensor)


def _first(flags: tf.Tensor) -> tf.Tensor:
    """The index (int32) of the first False in a non-empty bool vector (0 if none)."""
    return tf.cast(tf.argmin(tf.cast(flags, tf.int32)), tf.int32)


def _checked_batch(tensor: tf.Tensor, input_name: str, item: str, max_batch: int) -> tf.Tensor:
    """`tensor` once its batch (first) dimension is 1..max_batch."""
    count = tf.shape(tensor)[0]
    empty = tf.debugging.Assert(count > 0, [f"empty batch: send at least one {item} in {input_name}"],
                                name=f"check_{input_name}_not_empty")
    too_many = tf.debugging.Assert(
        count <= max_batch,
        [tf.strings.join(["batch of ", tf.strings.as_string(count), f" items in {input_name} is above the limit "
                          f"of {max_batch} (max_batch); split it"])], name=f"check_{input_name}_batch")
    return _after([empty, too_many], tensor)


def _checked_utf8(text: tf.Tensor) -> tf.Tensor:
    """`text` once every item is valid UTF-8: transcoding with replacement changes an
    invalid string (malformed, overlong, surrogate) and leaves a valid one as it is."""
    valid = tf.equal(tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace"), text)
    check = tf.debugging.Assert(
        tf.reduce_all(valid), [tf.strings.join(["text[", tf.strings.as_string(_first(valid)), "] is not valid UTF-8"])],
        name="check_text_utf8")
    return _after([check], text)


def _decode_each(image_bytes: tf.Tensor, size: int, radiometry, max_pixels: int) -> tf.Tensor:
    """Non-empty image_bytes [N] -> float32 [N, S, S, 3], one image at a time, or an
    InvalidArgument naming the first item that cannot be decoded or is too large.

    A decoder failure cannot be caught in a graph, so the images go through an in-graph
    tf.data pipeline that drops the items that fail (`ignore_errors`); the indices that
    come out say which went missing. An item's size is read from its header first and
    an item above `max_pixels` is never decoded.
    """
    def one(index, data):
        height, width, pixels, known = header_size(data)  # a JPEG with a broken header fails here
        too_large = tf.logical_and(known, pixels > max_pixels)
        # An unknown format goes to decode_image too, whose format check fails: dropped.
        image = tf.cond(too_large, lambda: tf.zeros([size, size, 3], tf.float32),
                        lambda: resize_image(decode_image(data, radiometry, max_pixels=None), size))
        return index, too_large, height, width, pixels, image

    count = tf.size(image_bytes)
    results = (tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes)).map(one)
               .ignore_errors().batch(tf.cast(count, tf.int64)))
    # No batch at all when every item failed: an empty one stands in.
    sizes = tf.zeros([0], tf.int64)
    empty = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), tf.zeros([0], tf.bool), sizes, sizes, sizes,
                                          tf.zeros([0, size, size, 3], tf.float32)))
    indices, too_large, heights, widths, pixels, images = results.concatenate(empty).take(1).get_single_element()
    decoded = tf.scatter_nd(indices[:, None], tf.ones_like(indices), [count]) > 0
    decodable = tf.debugging.Assert(
        tf.reduce_all(decoded), [tf.strings.join(["image_bytes[", tf.strings.as_string(_first(decoded)),
                                                  f"] cannot be decoded (not a readable {ENCODED_FORMATS} image)"])],
        name="check_image_bytes_decode")
    with tf.control_dependencies([decodable]):
        # Items come out in order: the first too-large one is at the first True.
        position = tf.argmax(tf.cast(too_large, tf.int32))
        name = tf.strings.join(["image_bytes[", tf.strings.as_string(tf.gather(indices, position)), "]"])
        fits = check_pixel_count(tf.gather(heights, position), tf.gather(widths, position),
                                 tf.where(tf.reduce_any(too_large), tf.gather(pixels, position), 0),
                                 max_pixels, name, limit_note="for one image (max_pixels)")
    return _after([decodable, fits], images)


def build_export_archive(hashing_model: HashingModel, max_pixels: int = DEFAULT_MAX_PIXELS,
                         max_batch: int = DEFAULT_MAX_BATCH) -> keras.export.ExportArchive:
    """An ExportArchive with the three endpoints (encode_text first, so it is also
    serving_default); each refuses batches above `max_batch` items, empty batches and
    images above `max_pixels` (see the module docstring)."""
    bits, size = hashing_model.bits, hashing_model.image_size
    hashing_model.build_encoders()
    radiometry = radiometry_of(hashing_model.features)  # 16-bit PNGs, as in training

    # The run's own encoding paths (a tuned encoder top included): HashingModel's.
    def image_outputs(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return code_outputs(hashing_model.image_hash_graph(pixels), bits)

    def encode_text(text: tf.Tensor) -> dict[str, tf.Tensor]:
        text = _checked_batch(_checked(text, input_specs("encode_text")[0]), "text", "text", max_batch)
        text = _checked_utf8(text)
        return code_outputs(hashing_model.text_hash_graph(text), bits)

    def encode_image(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        image_bytes = _checked(image_bytes, input_specs("encode_image")[0])
        image_bytes = _checked_batch(image_bytes, "image_bytes", "image", max_batch)
        # Each image is decoded and resized on its own (sizes differ), with the
        # training pipeline's functions, then the batch runs through the encoder.
        return image_outputs(_decode_each(image_bytes, size, radiometry, max_pixels))

    def encode_image_pixels(image: tf.Tensor) -> dict[str, tf.Tensor]:
        image = _checked_batch(_checked(image, input_specs("encode_image_pixels")[0]), "image", "image", max_batch)
        height, width = tf.shape(image, out_type=tf.int64)[1], tf.shape(image, out_type=tf.int64)[2]
        too_large = tf.debugging.Assert(height * width <= max_pixels, [tf.strings.join([
            "image: ", tf.strings.as_string(width), " x ", tf.strings.as_string(height),
            f" px per image is above the limit of {max_pixels:,} px for one image (max_pixels)"])],
            name="check_image_pixels")
        # resize_image area-reduces a large batch in uint8 before its float copy.
        return image_outputs(resize_image(_after([too_large], image), size))

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


def export_info(hashing_model: HashingModel, model_name: str, version: int, source: str | None,
                max_pixels: int = DEFAULT_MAX_PIXELS, max_batch: int = DEFAULT_MAX_BATCH) -> dict[str, Any]:
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
        "limits": {"max_pixels": max_pixels, "max_batch": max_batch},
        "tokenizer_ops": list(TOKENIZER_OPS),
        "features": dataclasses.asdict(hashing_model.features),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def _staging_prefix(version: int) -> str:
    """`.<version>.partial-<pid>@<host>.`: not an integer (TF Serving skips it), and it
    says which process writes it, so that a killed export's folder can be recognised."""
    return f".{version}.partial-{os.getpid()}@{_host()}."


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Another user's process.
        return True
    return True


def remove_stale_staging(model_dir: str) -> list[str]:
    """Removes the staging folders of killed exports from `model_dir` and returns their
    names: those of this host whose process is gone, and those without a process id
    (written by older versions) last changed before this process loaded the module.
    A live export's folder, or another host's, is left alone."""
    removed = []
    if not os.path.isdir(model_dir):
        return removed
    host = _host()
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        match = re.fullmatch(r"\.\d+\.partial-(?:(\d+)@([A-Za-z0-9-]+)\.)?\w+", name)
        if not match or not os.path.isdir(path) or os.path.islink(path):
            continue
        pid, owner = match.group(1), match.group(2)
        if pid is not None:
            stale = owner == host and int(pid) != os.getpid() and not _process_exists(int(pid))
        else:
            try:
                stale = os.stat(path).st_mtime < _LOADED_AT
            except FileNotFoundError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


def _write_failure(error: BaseException) -> str:
    """The one-line reason of a failed write: the OS error's text ("No space left on
    device", "File too large"), or TensorFlow's message without its op decorations and
    the temporary file's name ("<file>; File too large")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    message = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\]", "", message)
    message = " ".join(message.split())
    return message.rsplit("; ", 1)[-1][:300]


def export_savedmodel(hashing_model: HashingModel, export_base: str,
                      model_name: str = DEFAULT_MODEL_NAME, version: int | None = None,
                      warmup: bool = True, source: str | None = None,
                      max_pixels: int = DEFAULT_MAX_PIXELS, max_batch: int = DEFAULT_MAX_BATCH) -> str:
    """Writes `export_base/model_name/version/` atomically and returns its path.

    Args:
        hashing_model: the trained run (`HashingModel.from_run`).
        export_base: the folder a model server is pointed at (created if needed).
        model_name: the model's folder (and the name in the warm-up requests).
        version: an integer version; None takes the next free one.
        warmup: write `assets.extra/tf_serving_warmup_requests` (needs
            tensorflow-serving-api).
        source: the run folder, recorded in the export info.
        max_pixels: the signatures refuse an image above this many pixels (from its
            header, before decoding it).
        max_batch: the signatures refuse a request of more items than this.

    Raises:
        ValueError: a bad model name, version or limit.
        FileExistsError: that version already exists.
        ExportWriteError: the files could not be written (a full disk); nothing is left.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name) or model_name.startswith("."):
        raise ValueError(f"model_name={model_name!r}: use letters, digits, '_', '-' and '.'")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ValueError(f"version={version!r} must be a non-negative integer")
    for name, value in (("max_pixels", max_pixels), ("max_batch", max_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    hashing_model.check_exportable()
    model_dir = os.path.join(export_base, model_name)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as e:
        raise ExportWriteError(f"{model_dir}: cannot create the model folder ({_write_failure(e)})") from e
    remove_stale_staging(model_dir)
    version = next_version(model_dir) if version is None else version
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} already exists; pick another version or leave it unset")
    records = warmup_records(model_name, hashing_model.image_size) if warmup else []
    try:
        staging = tempfile.mkdtemp(prefix=_staging_prefix(version), dir=model_dir)
    except OSError as e:
        raise ExportWriteError(f"{final}: cannot create the staging folder ({_write_failure(e)})") from e
    try:
        build_export_archive(hashing_model, max_pixels, max_batch).write_out(staging, verbose=False)
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        if records:
            with tf.io.TFRecordWriter(os.path.join(staging, WARMUP_FILE)) as writer:
                for record in records:
                    writer.write(record)
        with open(os.path.join(staging, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(export_info(hashing_model, model_name, version, source, max_pixels, max_batch), f, indent=2)
            f.write("\n")
        # mkdtemp makes the folder private (0700); a server running as another user
        # must be able to read the model.
        os.chmod(staging, 0o755)
        if os.path.exists(final):
            raise FileExistsError(f"{final} appeared while exporting (another exporter?)")
        os.rename(staging, final)
    except (OSError, tf.errors.OpError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, FileExistsError):
            raise
        # A full disk surfaces as TensorFlow's OutOfRangeError / ResourceExhaustedError
        # or as an OSError (ENOSPC, EFBIG), from deep inside the SavedModel writer.
        raise ExportWriteError(f"{final}: the export could not be written ({_write_failure(e)}); "
                               "nothing was left behind") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
