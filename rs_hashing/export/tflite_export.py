"""TFLite export of the image encoder + image head (and the text side from token ids).

`export_tflite(hashing_model, out_path, quantization)` writes:

* `out_path` (e.g. `codes_fp16.tflite`): signature `serving_default`, input `image`
  float32 [N, S, S, 3] pixels in [0, 255] (resized as in training, see
  `features.image_pipeline` and `edge_encoder.load_image`), outputs `code` int8 +-1
  [N, K], `packed` uint8 [N, K/8] (numpy.packbits order) and `hash` float32 [N, K].
* `<stem>_text.tflite`: the text encoder + text head from tokens, inputs `token_ids` and
  `padding_mask` int32 [N, T] (T = the run's sequence_length; [CLS] ... [SEP], padding
  id 0 with mask 0), the same outputs. The tokenizer itself cannot be converted: it
  runs on TensorFlow Text ops, which are neither TFLite builtins nor in the pip
  runtimes, so token ids come from `TextEncoder.tokenize` (or any BERT WordPiece
  tokenizer with the run's vocabulary, lower-casing and accent stripping).
* `<stem>.json`: sizes, operators, and the bit agreement with the Keras model measured
  on real images (`ImageSample`, RSICD-AID by default): through the TensorFlow
  preprocessing and, for the image model, through the edge runtime's own decoding and
  resizing too (`edge_encoder`), for each JPEG decoder available.

A run that fine-tuned the tops of its encoders (tower mode) converts with its tuned tops:
both models go through `HashingModel`'s graph functions (frozen bottom, tuned top, head).

Only TFLite builtin operators are allowed (the pip runtimes have no Flex delegate); the
conversion fails otherwise. `int8` calibrates on a representative set of images
(captions for the text model) and is refused, with the measured figure, when fewer
than 99% of the bits agree with the Keras model.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import tempfile
from typing import Any, Callable, Iterable, Sequence

import flatbuffers
import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as litert_schema
from ai_edge_litert.interpreter import Interpreter

from rs_hashing.edge import edge_encoder
from rs_hashing.atomic_files import write_bytes_atomic
from rs_hashing.hashing_model import HashingModel
from rs_hashing.export.image_sample import ImageSample
from rs_hashing.export.serving_export import code_outputs

QUANTIZATIONS = ("fp32", "fp16", "int8")
MIN_INT8_AGREEMENT = 0.99
SIGNATURE_KEY = "serving_default"


class QuantizationRejectedError(ValueError):
    """A quantised model agrees with the Keras model on too few bits to be used."""


def image_hashing_function(hashing_model: HashingModel) -> tf.types.experimental.GenericFunction:
    """tf.function: `image` float32 [N, S, S, 3] in [0, 255] -> {code, packed, hash}."""
    size = hashing_model.image_size
    hashing_model.build_encoders()

    # No Python control flow on tensors inside: autograph has nothing to convert.
    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="image")],
                 autograph=False)
    def image_codes(image):
        return code_outputs(hashing_model.image_hash_graph(image), hashing_model.bits)

    return image_codes


def text_hashing_function(hashing_model: HashingModel) -> tf.types.experimental.GenericFunction:
    """tf.function: `token_ids`, `padding_mask` int32 [N, T] -> {code, packed, hash}."""
    length = hashing_model.features.sequence_length
    hashing_model.build_encoders()

    @tf.function(input_signature=[tf.TensorSpec([None, length], tf.int32, name="token_ids"),
                                  tf.TensorSpec([None, length], tf.int32, name="padding_mask")],
                 autograph=False)
    def text_codes(token_ids, padding_mask):
        return code_outputs(hashing_model.token_hash_graph(token_ids, padding_mask), hashing_model.bits)

    return text_codes


# Operator -> the input that holds its weights, stored as float16 by
# `compress_weights_fp16`: convolution kernels and dense matrices, and the embedding
# tables a GATHER reads (the text model's vocabulary). Depthwise kernels stay float32:
# each output sums only 9-25 products, so their fp16 rounding does not average out; on
# RSICD-AID they caused about half of the flipped bits while holding 1% of the weights.
# Biases stay float32 for the same reason (and they are tiny).
FP16_WEIGHT_INPUTS = {"CONV_2D": 1, "FULLY_CONNECTED": 1, "GATHER": 0}
_TFLITE_FILE_IDENTIFIER = b"TFL3"
_BUFFER_ALIGNMENT = 16  # As the TFLite converter aligns constant buffers.


class _AlignedBufferT(litert_schema.BufferT):
    """A flatbuffer Buffer whose bytes start on a 16-byte boundary when packed."""

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - flatbuffers API name.
        data = None
        if self.data is not None and len(self.data):
            payload = np.asarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(payload), _BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            data = builder.EndVector()
        litert_schema.BufferStart(builder)
        if data is not None:
            litert_schema.BufferAddData(builder, data)
        litert_schema.BufferAddOffset(builder, self.offset)
        litert_schema.BufferAddSize(builder, self.size)
        return litert_schema.BufferEnd(builder)


def compress_weights_fp16(model_content: bytes,
                          weight_inputs: dict[str, int] | None = None) -> bytes:
    """Stores the float32 weight tensors of the given operators as float16.

    Each such weight becomes a float16 constant and a DEQUANTIZE operator (run once,
    before the graph) that restores the float32 tensor, the layout the TFLite
    converter's own float16 quantization produces. Unlike that quantization, which
    converts every float constant, only the weights named in `weight_inputs`
    (operator name -> input index; default `FP16_WEIGHT_INPUTS`) are touched.
    """
    weight_inputs = FP16_WEIGHT_INPUTS if weight_inputs is None else weight_inputs
    model = litert_schema.ModelT.InitFromPackedBuf(bytearray(model_content), 0)
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    wanted = {getattr(litert_schema.BuiltinOperator, name): index for name, index in weight_inputs.items()}
    dequantize = litert_schema.BuiltinOperator.DEQUANTIZE
    if dequantize not in codes:
        code = litert_schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = dequantize
        code.version = 3  # The version that reads float16.
        model.operatorCodes.append(code)
        codes.append(dequantize)
    dequantize_index = codes.index(dequantize)
    # The converter shares one buffer between identical constants; a shared buffer must
    # keep its bytes for the tensors that are not compressed.
    references = collections.Counter(t.buffer for g in model.subgraphs for t in g.tensors)
    for subgraph in model.subgraphs:
        weights = set()
        for op in subgraph.operators:
            position = wanted.get(codes[op.opcodeIndex])
            if position is not None and position < len(op.inputs) and op.inputs[position] >= 0:
                weights.add(op.inputs[position])
        dequantize_ops = []
        for index in sorted(weights):
            tensor = subgraph.tensors[index]
            buffer = model.buffers[tensor.buffer]
            if (tensor.type != litert_schema.TensorType.FLOAT32 or buffer.data is None
                    or not len(buffer.data) or tensor.quantization is not None
                    and tensor.quantization.scale is not None):
                continue  # Not a plain float32 constant.
            half = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), "<f4").astype("<f2")
            stored = _AlignedBufferT()
            stored.data = np.frombuffer(half.tobytes(), np.uint8)
            model.buffers.append(stored)
            packed = litert_schema.TensorT()
            packed.shape, packed.type = list(tensor.shape), litert_schema.TensorType.FLOAT16
            packed.buffer, packed.name = len(model.buffers) - 1, tensor.name + b"_fp16"
            subgraph.tensors.append(packed)
            # The float32 tensor keeps its index (signatures and consumers refer to it)
            # but becomes the DEQUANTIZE output instead of a constant.
            references[tensor.buffer] -= 1
            if references[tensor.buffer] == 0:
                model.buffers[tensor.buffer] = _AlignedBufferT()
            else:
                model.buffers.append(_AlignedBufferT())
                tensor.buffer = len(model.buffers) - 1
            op = litert_schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = dequantize_index, [len(subgraph.tensors) - 1], [index]
            dequantize_ops.append(op)
        subgraph.operators = dequantize_ops + list(subgraph.operators)
    model.buffers = [buffer if isinstance(buffer, _AlignedBufferT) else _aligned(buffer)
                     for buffer in model.buffers]
    builder = flatbuffers.Builder(len(model_content))
    builder.Finish(model.Pack(builder), file_identifier=_TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _aligned(buffer: litert_schema.BufferT) -> _AlignedBufferT:
    aligned = _AlignedBufferT()
    aligned.data, aligned.offset, aligned.size = buffer.data, buffer.offset, buffer.size
    return aligned


def convert(function: tf.types.experimental.GenericFunction, quantization: str,
            representative: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None) -> bytes:
    """Converts a tf.function with an input signature to a .tflite flatbuffer.

    Args:
        function: the function (its named inputs become the signature's inputs).
        quantization: `fp32`, `fp16` (convolution and dense weights stored as float16,
            see `compress_weights_fp16`; arithmetic stays float32) or `int8` (weights and
            activations, calibrated on `representative`; float inputs and outputs).
        representative: yields input dicts for calibration (int8 only).

    Raises:
        ValueError: unknown quantization, int8 without a representative dataset, or a
            graph that needs non-builtin (Flex/custom) operators.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    if quantization == "int8" and representative is None:
        raise ValueError("int8 quantization needs a representative dataset (calibration images)")
    with tempfile.TemporaryDirectory(prefix="rs_hashing_tflite_") as saved_model_dir:
        # The SavedModel route keeps the signature (named inputs and outputs), which a
        # conversion from concrete functions drops.
        archive = keras.export.ExportArchive()
        archive.add_endpoint(SIGNATURE_KEY, function)
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, [SIGNATURE_KEY])
        # Weights become constants (folded into the kernels), not resource variables
        # that a calibration or the runtime would have to initialise.
        converter.experimental_enable_resource_variables = False
        # Builtins only: the pip runtimes (ai-edge-litert) ship no Flex delegate.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
        try:
            content = converter.convert()
        except Exception as e:  # The converter raises its own ConverterError type.
            raise ValueError(f"TFLite conversion ({quantization}) failed: {str(e)[:2000]}") from e
    if quantization == "fp16":
        content = compress_weights_fp16(content)
    custom = [name for name in edge_encoder.operator_names(content) if name.startswith("CUSTOM:")]
    if custom:
        raise ValueError(f"the converted model needs non-builtin operators {custom}")
    return content


def run_tflite(model_content: bytes, inputs: dict[str, np.ndarray], batch_size: int = 16,
               num_threads: int | None = None) -> dict[str, np.ndarray]:
    """Runs the `serving_default` signature of a flatbuffer over inputs in batches."""
    interpreter = Interpreter(model_content=model_content, num_threads=num_threads or os.cpu_count())
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    count = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, count, batch_size):
        result = runner(**{k: np.ascontiguousarray(v[start:start + batch_size]) for k, v in inputs.items()})
        for name, value in result.items():
            parts.setdefault(name, []).append(np.array(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def agreement(reference_hash: np.ndarray, hash_codes: np.ndarray) -> dict[str, float]:
    """Share of equal bits and of equal whole codes (sign with 0 -> +1)."""
    same = (np.asarray(reference_hash) >= 0) == (np.asarray(hash_codes) >= 0)
    return {"bit_agreement": float(same.mean()) if same.size else float("nan"),
            "code_agreement": float(same.all(axis=1).mean()) if same.size else float("nan"),
            "count": int(len(same))}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def text_model_path(out_path: str) -> str:
    """`codes.tflite` -> `codes_text.tflite`."""
    return os.path.splitext(out_path)[0] + "_text.tflite"


def report_path(out_path: str) -> str:
    """`codes.tflite` -> `codes.json`."""
    return os.path.splitext(out_path)[0] + ".json"


def _refuse_if_poor(quantization: str, figures: dict[str, float], what: str) -> str | None:
    if quantization == "int8" and not figures["bit_agreement"] >= MIN_INT8_AGREEMENT:
        return (f"int8 {what} refused: {100 * figures['bit_agreement']:.2f}% of bits agree with "
                f"the Keras model on {figures['count']} inputs, below the "
                f"{100 * MIN_INT8_AGREEMENT:.0f}% required; use fp16 (about half the fp32 size)")
    return None


def _edge_agreement(content: bytes, out_path: str, sample: ImageSample, reference: np.ndarray,
                    num_threads: int | None) -> dict[str, Any]:
    """Agreement of the edge runtime's own path (its decoding and resizing, then this
    file) with the Keras model, for each JPEG decoder available here."""
    decoders = ["pillow"] + (["simplejpeg"] if edge_encoder.jpeg_decoder_used() == "simplejpeg" else [])
    staging = out_path + ".partial"
    write_bytes_atomic(staging, content)
    try:
        figures = {}
        for decoder in decoders:
            runtime = edge_encoder.EdgeEncoder(staging, num_threads=num_threads, jpeg_decoder=decoder)
            figures[decoder] = agreement(reference, runtime.encode_files(sample.paths)["hash"])
    finally:
        os.remove(staging)
    return {"by_jpeg_decoder": figures, "default_decoder": edge_encoder.jpeg_decoder_used(),
            "images": sample.source}


def _export_text(hashing_model: HashingModel, quantization: str, out_path: str,
                 captions: Sequence[str], calibration_captions: Sequence[str],
                 num_threads: int | None) -> dict[str, Any]:
    tokenize = hashing_model.text_encoder.tokenize
    representative = None
    if quantization == "int8":
        if not calibration_captions:
            raise ValueError("int8 quantization of the text model needs calibration captions")
        tokens = {k: v.numpy() for k, v in tokenize(list(calibration_captions)).items()}
        representative = lambda: ({k: v[i:i + 1] for k, v in tokens.items()}  # noqa: E731
                                  for i in range(len(tokens["token_ids"])))
    content = convert(text_hashing_function(hashing_model), quantization, representative)
    path = text_model_path(out_path)
    info: dict[str, Any] = {
        "file": os.path.basename(path), "bytes": len(content),
        "operators": edge_encoder.operator_names(content),
        "inputs": {name: {"dtype": "int32", "shape": [-1, hashing_model.features.sequence_length]}
                   for name in ("token_ids", "padding_mask")},
        "tokenizer": {"text_encoder": hashing_model.features.text_encoder,
                      "note": "run TextEncoder.tokenize (BERT WordPiece, lower-cased, accents "
                              "stripped, [CLS] ... [SEP], padded with 0) outside the model"},
        "agreement": None, "written": True,
    }
    if captions:
        tokens = {k: v.numpy() for k, v in tokenize(list(captions)).items()}
        hashes = run_tflite(content, tokens, num_threads=num_threads)["hash"]
        info["agreement"] = agreement(hashing_model.text_hash(list(captions)), hashes)
        refusal = _refuse_if_poor(quantization, info["agreement"], "text model")
        if refusal:
            info.update(written=False, refused=refusal)
            return info
    elif quantization == "int8":
        info.update(written=False, refused="int8 text model refused: no captions to measure agreement on")
        return info
    write_bytes_atomic(path, content)
    return info


def export_tflite(hashing_model: HashingModel, out_path: str, quantization: str = "fp32",
                  sample: ImageSample | None = None, calibration: ImageSample | None = None,
                  text: bool = True, num_threads: int | None = None,
                  source: str | None = None) -> dict[str, Any]:
    """Converts, measures and writes the image model (and the text model); returns the
    report that is also written to `<stem>.json`.

    Args:
        hashing_model: the trained run (`HashingModel.from_run`).
        out_path: the image model's .tflite path.
        quantization: `fp32`, `fp16` or `int8`.
        sample: images (and captions) to measure agreement on; None measures nothing.
        calibration: images (and captions) for int8 calibration, best disjoint from
            `sample`.
        text: also write the text model.
        num_threads: interpreter threads for the measurements.
        source: the run folder, recorded in the report.

    Raises:
        ValueError: bad arguments, int8 without calibration images, or a failed
            conversion.
        QuantizationRejectedError: int8 agreement below 99% (the report is still written,
            the .tflite file is not).
    """
    if not out_path.endswith(".tflite"):
        raise ValueError(f"out={out_path!r} must end in .tflite")
    hashing_model.check_exportable()
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    if quantization == "int8" and (calibration is None or not calibration.paths):
        raise ValueError("int8 quantization needs calibration images (a representative dataset)")
    if quantization == "int8" and (sample is None or not sample.paths):
        raise ValueError("int8 quantization needs images to measure bit agreement on "
                         f"(it is refused below {100 * MIN_INT8_AGREEMENT:.0f}%)")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    representative = None
    if quantization == "int8":
        pixels = np.stack([hashing_model.preprocess_image_bytes(_read(p)) for p in calibration.paths])
        representative = lambda: ({"image": pixels[i:i + 1]} for i in range(len(pixels)))  # noqa: E731
    content = convert(image_hashing_function(hashing_model), quantization, representative)
    report: dict[str, Any] = {
        "file": os.path.basename(out_path),
        "bytes": len(content),
        "quantization": quantization,
        "bits": hashing_model.bits,
        "image_size": hashing_model.image_size,
        "signature": SIGNATURE_KEY,
        "inputs": {"image": {"dtype": "float32", "shape": [-1, hashing_model.image_size, hashing_model.image_size, 3],
                             "range": [0, 255]}},
        "outputs": {"code": "int8 +-1 [N, K]", "packed": "uint8 [N, K/8], numpy.packbits(code > 0)",
                    "hash": "float32 [N, K]"},
        "operators": edge_encoder.operator_names(content),
        "agreement": None,
        "edge_agreement": None,
        "calibration_images": len(calibration.paths) if quantization == "int8" else 0,
        "min_int8_bit_agreement": MIN_INT8_AGREEMENT,
        "source_run": source,
        "features": dataclasses.asdict(hashing_model.features),
        "tensorflow": tf.__version__,
        "written": False,
    }
    refusal = None
    if sample is not None and sample.paths:
        pixels = np.stack([hashing_model.preprocess_image_bytes(_read(p)) for p in sample.paths])
        reference = hashing_model.image_hash_from_pixels(pixels)
        converted = run_tflite(content, {"image": pixels}, num_threads=num_threads)
        report["agreement"] = {**agreement(reference, converted["hash"]), "images": sample.source,
                               "max_abs_hash_difference": float(np.abs(reference - converted["hash"]).max())}
        refusal = _refuse_if_poor(quantization, report["agreement"], "image model")
        if refusal is None:
            report["edge_agreement"] = _edge_agreement(content, out_path, sample, reference, num_threads)
    if refusal is None:
        write_bytes_atomic(out_path, content)
        report["written"] = True
        if text:
            report["text_model"] = _export_text(
                hashing_model, quantization, out_path, sample.captions if sample else (),
                calibration.captions if calibration else (), num_threads)
    else:
        report["refused"] = refusal
    with open(report_path(out_path), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    if refusal is not None:
        raise QuantizationRejectedError(refusal)
    return report
