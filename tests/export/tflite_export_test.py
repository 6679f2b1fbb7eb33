"""Tests for rs_hashing.export.tflite_export (tiny hashing_model; RSICD-AID checks are slow)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as litert_schema
from ai_edge_litert.interpreter import Interpreter

from rs_hashing.edge import edge_encoder
from rs_hashing.export import tflite_export
from rs_hashing.hashing_model import HashingModel
from rs_hashing.export.image_sample import ImageSample
from tests import testing
from tests import tiny_run

S, K, T = tiny_run.IMAGE_SIZE, tiny_run.BITS, tiny_run.SEQUENCE_LENGTH


@pytest.fixture(scope="module")
def hashing_model(tmp_path_factory):
    return tiny_run.tiny_model(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    paths = tiny_run.write_images(str(tmp_path_factory.mktemp("images")), count=4)
    return ImageSample(tuple(paths), tiny_run.CAPTIONS)


@pytest.fixture(scope="module")
def fp32_content(hashing_model):
    return tflite_export.convert(tflite_export.image_hashing_function(hashing_model), "fp32")


def _pixels(hashing_model, paths):
    return np.stack([hashing_model.preprocess_image_bytes(open(p, "rb").read()) for p in paths])


def test_fp32_export_writes_both_models_and_the_report(tmp_path, hashing_model, sample):
    out = str(tmp_path / "edge" / "codes.tflite")
    report = tflite_export.export_tflite(hashing_model, out, "fp32", sample=sample)
    with open(str(tmp_path / "edge" / "codes.json"), encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    assert report["written"] and os.path.getsize(out) == report["bytes"]
    assert report["agreement"]["bit_agreement"] == 1.0 and report["agreement"]["count"] == 4
    assert report["agreement"]["max_abs_hash_difference"] < 1e-4
    assert not [op for op in report["operators"] if op.startswith("CUSTOM")]
    for figures in report["edge_agreement"]["by_jpeg_decoder"].values():
        assert figures["count"] == 4 and 0.5 < figures["bit_agreement"] <= 1.0

    runner = Interpreter(model_path=out).get_signature_runner(tflite_export.SIGNATURE_KEY)
    image = runner.get_input_details()["image"]
    assert list(image["shape_signature"]) == [-1, S, S, 3] and image["dtype"] == np.float32
    outputs = runner(image=_pixels(hashing_model, sample.paths))
    np.testing.assert_array_equal(outputs["packed"], np.packbits(outputs["code"] > 0, axis=-1))
    reference = hashing_model.image_hash_from_bytes([open(p, "rb").read() for p in sample.paths])
    np.testing.assert_array_equal(outputs["code"], np.where(reference >= 0, 1, -1))

    text = report["text_model"]
    assert text["written"] and text["agreement"]["bit_agreement"] == 1.0
    text_runner = Interpreter(model_path=tflite_export.text_model_path(out)).get_signature_runner()
    assert {k: list(v["shape_signature"]) for k, v in text_runner.get_input_details().items()} == {
        "token_ids": [-1, T], "padding_mask": [-1, T]}
    tokens = {k: v.numpy() for k, v in hashing_model.text_encoder.tokenize(list(tiny_run.CAPTIONS)).items()}
    codes = text_runner(**tokens)["code"]
    np.testing.assert_array_equal(codes, np.where(hashing_model.text_hash(list(tiny_run.CAPTIONS)) >= 0, 1, -1))


def test_fp16_stores_dense_and_conv_weights_as_float16(hashing_model, sample, fp32_content):
    content = tflite_export.compress_weights_fp16(fp32_content)
    original = litert_schema.ModelT.InitFromPackedBuf(bytearray(fp32_content), 0)
    model = litert_schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    subgraph, names = model.subgraphs[0], edge_encoder.operator_names(content)
    assert "DEQUANTIZE" in names and not [n for n in names if n.startswith("CUSTOM")]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    dequantize = [op for op in subgraph.operators if codes[op.opcodeIndex] == litert_schema.BuiltinOperator.DEQUANTIZE]
    # One float16 constant and one DEQUANTIZE per conv / dense weight (the tiny CNN's
    # two convolutions, the image head's two dense layers).
    weighted = [op for op in subgraph.operators if codes[op.opcodeIndex] in
                (litert_schema.BuiltinOperator.CONV_2D, litert_schema.BuiltinOperator.FULLY_CONNECTED)]
    assert len(dequantize) == len({op.inputs[1] for op in weighted}) > 0
    for op in dequantize:
        half, full = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.outputs[0]]
        assert half.type == litert_schema.TensorType.FLOAT16 and full.type == litert_schema.TensorType.FLOAT32
        before = original.subgraphs[0].tensors[op.outputs[0]]
        expected = np.frombuffer(bytes(original.buffers[before.buffer].data), "<f4").astype("<f2")
        np.testing.assert_array_equal(np.frombuffer(bytes(model.buffers[half.buffer].data), "<f2"), expected)
        assert model.buffers[full.buffer].data is None  # Computed at load, no longer stored.
    # Biases stay float32.
    for op in weighted:
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            assert subgraph.tensors[op.inputs[2]].type == litert_schema.TensorType.FLOAT32
    pixels = _pixels(hashing_model, sample.paths)
    full = tflite_export.run_tflite(fp32_content, {"image": pixels})["hash"]
    half = tflite_export.run_tflite(content, {"image": pixels})["hash"]
    np.testing.assert_allclose(half, full, atol=5e-3)


def test_fp16_export_is_smaller_and_agrees(tmp_path, hashing_model, sample, fp32_content):
    report = tflite_export.export_tflite(hashing_model, str(tmp_path / "h.tflite"), "fp16", sample=sample, text=False)
    assert report["bytes"] < len(fp32_content) and report["agreement"]["bit_agreement"] >= 0.95
    assert "text_model" not in report and not os.path.exists(tflite_export.text_model_path(str(tmp_path / "h.tflite")))


# The converter's int8 calibration uses the deprecated tf.lite.Interpreter internally.
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_int8_is_refused_below_the_threshold_with_the_figure(tmp_path, hashing_model, sample, monkeypatch):
    calibration = ImageSample(tuple(tiny_run.write_images(str(tmp_path / "cal"), 4, seed=1)),
                                            tiny_run.CAPTIONS)
    out = str(tmp_path / "q.tflite")
    monkeypatch.setattr(tflite_export, "MIN_INT8_AGREEMENT", 1.01)  # Nothing can pass.
    with pytest.raises(tflite_export.QuantizationRejectedError,
                       match=r"int8 image model refused: \d+\.\d\d% of bits agree .* on 4 inputs"):
        tflite_export.export_tflite(hashing_model, out, "int8", sample=sample, calibration=calibration)
    assert not os.path.exists(out)
    with open(tflite_export.report_path(out), encoding="utf-8") as f:
        report = json.load(f)
    assert not report["written"] and "refused" in report and report["agreement"]["count"] == 4

    monkeypatch.setattr(tflite_export, "MIN_INT8_AGREEMENT", 0.0)
    report = tflite_export.export_tflite(hashing_model, out, "int8", sample=sample, calibration=calibration)
    assert report["written"] and "QUANTIZE" in report["operators"] and os.path.exists(out)


@pytest.mark.parametrize("kwargs, message", [
    ({"quantization": "int8"}, "needs calibration images"),
    ({"quantization": "bf16"}, "not one of fp32, fp16, int8"),
    ({"out_path": "codes.lite"}, "must end in .tflite"),
])
def test_bad_arguments(tmp_path, hashing_model, kwargs, message):
    arguments = {"out_path": str(tmp_path / "c.tflite"), "quantization": "fp32", **kwargs}
    with pytest.raises(ValueError, match=message):
        tflite_export.export_tflite(hashing_model, arguments.pop("out_path"), **arguments)


def test_non_builtin_operators_are_refused():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def string_lengths(text):
        return {"length": tf.strings.length(text)}

    with pytest.raises(ValueError, match="TFLite conversion \\(fp32\\) failed"):
        tflite_export.convert(string_lengths, "fp32")


@pytest.mark.slow
@pytest.mark.skipif(not testing.has_shared_rsicd(), reason=testing.NO_SHARED_REASON)
def test_rsicd_fp32_and_fp16_agree_on_999_of_1000_bits(tmp_path):
    """The issue's bar, with the real encoders on 200 RSICD-AID images: fp32 and fp16 agree
    with the Keras model on >= 99.9% of bits and fp16 is <= 0.55x the fp32 file.
    RS_HASHING_EXPORT_RUN may name a trained run (else: seeded untrained heads)."""
    from rs_hashing import config as config_lib
    from rs_hashing.encoders.frozen_encoders import FrozenEncoders
    from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel

    run = os.environ.get("RS_HASHING_EXPORT_RUN")
    if run:
        hashing_model = HashingModel.from_run(run)
    else:
        config = config_lib.Config()
        encoders = FrozenEncoders(config.features)
        heads = CrossModalHashingModel(1280, encoders.text.output_dim, 64, 1024, num_train=4, seed=0)
        hashing_model = HashingModel(str(tmp_path), config, heads, encoders)
    sample = testing.rsicd_sample(200)
    reports = {q: tflite_export.export_tflite(hashing_model, str(tmp_path / f"{q}.tflite"), q, sample=sample, text=False)
               for q in ("fp32", "fp16")}
    for q, report in reports.items():
        assert report["agreement"]["bit_agreement"] >= 0.999, (q, report["agreement"])
    assert reports["fp16"]["bytes"] <= 0.55 * reports["fp32"]["bytes"]


def test_a_fine_tuned_run_converts_with_its_tuned_tops_and_full_agreement(tmp_path_factory, tmp_path, sample):
    tuned = tiny_run.tuned_tower_model(str(tmp_path_factory.mktemp("tuned")))
    out = str(tmp_path / "edge" / "codes.tflite")
    report = tflite_export.export_tflite(tuned, out, "fp32", sample=sample)
    assert report["agreement"]["bit_agreement"] == 1.0 and report["agreement"]["max_abs_hash_difference"] < 1e-4
    assert report["text_model"]["agreement"]["bit_agreement"] == 1.0
    runner = Interpreter(model_path=out).get_signature_runner(tflite_export.SIGNATURE_KEY)
    pixels = _pixels(tuned, sample.paths)
    reference = tuned.image_hash_from_pixels(pixels)
    np.testing.assert_allclose(runner(image=pixels)["hash"], reference, atol=1e-4)
    pretrained = np.asarray(tuned.heads.image_head(tuned.towers.image_top()(tuned.towers.image_bottom(pixels))))
    assert np.abs(pretrained - reference).max() > 1e-2  # the file holds the tuned top, not the pretrained one
    text_runner = Interpreter(model_path=tflite_export.text_model_path(out)).get_signature_runner()
    tokens = {k: v.numpy() for k, v in tuned.text_encoder.tokenize(list(tiny_run.CAPTIONS)).items()}
    np.testing.assert_allclose(text_runner(**tokens)["hash"], tuned.text_hash(list(tiny_run.CAPTIONS)), atol=1e-4)
