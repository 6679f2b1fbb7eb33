"""Tests for rs_hashing.export.serving_export: the TF Serving contract, without a server.

The SavedModel is loaded the way the model server loads it (the SignatureDef map of the
'serve' MetaGraph, tensors fed and fetched by the names it lists) and driven with
tensorflow-serving-api PredictRequest / PredictResponse protos. Tiny hashing_model keep the
unit tests to seconds; the RSICD-AID parity test with the real hashing_model is slow.
"""

import base64
import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401 - registers the tokenizer ops the SavedModel uses.

from rs_hashing.export import serving_export
from rs_hashing.codes import binarize
from rs_hashing.hashing_model import HashingModel
from rs_hashing.features.image_pipeline import resize_image
from tests import testing
from tests import tiny_run

predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2",
                                  reason="tensorflow-serving-api is not installed")
from tensorflow_serving.apis import model_pb2, prediction_log_pb2  # noqa: E402

DOCS = os.path.join(testing.REPO_ROOT, "docs", "serving.md")
K = tiny_run.BITS


@pytest.fixture(scope="module")
def hashing_model(tmp_path_factory):
    return tiny_run.tiny_model(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def export_path(hashing_model, tmp_path_factory):
    return serving_export.export_savedmodel(hashing_model, str(tmp_path_factory.mktemp("serving")))


class SignatureSession:
    """What the model server does with a SavedModel: a TF1 session over the 'serve'
    MetaGraph, inputs fed and outputs fetched by the tensor names of a SignatureDef."""

    def __init__(self, path: str):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        self.signatures = self.meta_graph.signature_def

    def run(self, signature_name: str, inputs: dict) -> dict:
        signature = self.signatures[signature_name]
        if set(inputs) != set(signature.inputs):
            raise ValueError(f"inputs {sorted(inputs)} do not match {sorted(signature.inputs)}")
        feed = {signature.inputs[k].name: v for k, v in inputs.items()}
        return self.session.run({k: v.name for k, v in signature.outputs.items()}, feed)

    def predict(self, request_bytes: bytes) -> bytes:
        """A serialized PredictRequest in, a serialized PredictResponse out."""
        request = predict_pb2.PredictRequest.FromString(request_bytes)
        name = request.model_spec.signature_name or "serving_default"
        outputs = self.run(name, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        response = predict_pb2.PredictResponse(model_spec=request.model_spec)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response.SerializeToString()


@pytest.fixture(scope="module")
def server(export_path):
    return SignatureSession(export_path)


def _request(signature: str, inputs: dict) -> bytes:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="rs_hashing", signature_name=signature))
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request.SerializeToString()


def _response(response_bytes: bytes) -> dict:
    response = predict_pb2.PredictResponse.FromString(response_bytes)
    return {key: tf.make_ndarray(value) for key, value in response.outputs.items()}


def _check_outputs(outputs: dict, reference_hash: np.ndarray) -> None:
    assert outputs["code"].dtype == np.int8 and outputs["packed"].dtype == np.uint8
    assert outputs["hash"].dtype == np.float32
    np.testing.assert_array_equal(outputs["code"], binarize(reference_hash))
    np.testing.assert_array_equal(outputs["packed"], np.packbits(outputs["code"] > 0, axis=-1))
    np.testing.assert_allclose(outputs["hash"], reference_hash, atol=1e-5)


# ----------------------------------------------------------------- outputs and layout

def test_code_outputs_hand_computed():
    hash_codes = tf.constant([[0.9, -0.5, 0.0, -1e-8, 0.3, -0.3, 0.2, 0.1,
                               -0.7, -0.1, -0.2, -0.9, 0.4, 0.0, 1e-9, 0.6]])
    outputs = serving_export.code_outputs(hash_codes, 16)
    np.testing.assert_array_equal(outputs["code"], [[1, -1, 1, -1, 1, -1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1]])
    # + - + - + - + + = 0b10101011 = 0xAB; - - - - + + + + = 0x0F.
    np.testing.assert_array_equal(outputs["packed"], [[0xAB, 0x0F]])
    assert outputs["code"].dtype == tf.int8 and outputs["packed"].dtype == tf.uint8
    with pytest.raises(ValueError, match="bits=12 must be a multiple of 8"):
        serving_export.code_outputs(hash_codes[:, :12], 12)


def test_export_layout_warmup_and_info(export_path, hashing_model):
    base = os.path.dirname(export_path)
    assert os.path.basename(export_path) == "1" and os.listdir(base) == ["1"]
    assert stat.S_IMODE(os.stat(export_path).st_mode) == 0o755
    for name in ("saved_model.pb", "variables", serving_export.WARMUP_FILE, serving_export.INFO_FILE):
        assert os.path.exists(os.path.join(export_path, name)), name
    with open(os.path.join(export_path, serving_export.INFO_FILE), encoding="utf-8") as f:
        info = json.load(f)
    assert (info["bits"], info["image_size"], info["version"]) == (K, tiny_run.IMAGE_SIZE, 1)
    assert info["serving_default"] == "encode_text"
    assert serving_export.next_version(base) == 2


def test_versions_are_numbered_and_appear_atomically(tmp_path, hashing_model, monkeypatch):
    base = tmp_path / "serving"
    (base / "rs_hashing" / "3").mkdir(parents=True)
    (base / "rs_hashing" / "notes").mkdir()
    seen = {}

    class FakeArchive:
        def write_out(self, path, verbose=True):
            # While the model is written, no integer-named (servable) folder exists yet.
            seen["staging"] = os.path.basename(path)
            seen["listing"] = sorted(os.listdir(base / "rs_hashing"))
            with open(os.path.join(path, "saved_model.pb"), "wb") as f:
                f.write(b"stub")

    monkeypatch.setattr(serving_export, "build_export_archive", lambda *limits: FakeArchive())
    path = serving_export.export_savedmodel(hashing_model, str(base), warmup=False)
    assert path == str(base / "rs_hashing" / "4")
    assert not re.fullmatch(r"\d+", seen["staging"]) and seen["listing"] == sorted(["3", seen["staging"], "notes"])
    assert sorted(os.listdir(base / "rs_hashing")) == ["3", "4", "notes"]
    with pytest.raises(FileExistsError, match="already exists"):
        serving_export.export_savedmodel(hashing_model, str(base), version=4, warmup=False)


def test_failed_export_leaves_nothing(tmp_path, hashing_model, monkeypatch):
    class BrokenArchive:
        def write_out(self, path, verbose=True):
            with open(os.path.join(path, "saved_model.pb"), "wb") as f:
                f.write(b"half")
            raise RuntimeError("disk full")

    monkeypatch.setattr(serving_export, "build_export_archive", lambda *limits: BrokenArchive())
    with pytest.raises(RuntimeError, match="disk full"):
        serving_export.export_savedmodel(hashing_model, str(tmp_path), version=7, warmup=False)
    assert os.listdir(tmp_path / "rs_hashing") == []


def _limit_file_size(max_bytes: int):
    """preexec_fn of a child whose writes past `max_bytes` fail with EFBIG, as on a
    full disk (SIGXFSZ ignored, so the write returns an error instead of killing it)."""
    def limit():
        import resource  # pylint: disable=import-outside-toplevel
        import signal  # pylint: disable=import-outside-toplevel
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


def test_disk_full_gives_one_line_naming_the_folder_and_leaves_nothing(tmp_path):
    run = tiny_run.make_tiny_run(str(tmp_path / "tiny"), saved_encoders=True)
    base = tmp_path / "serving"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "export.export_savedmodel", f"--run_dir={run}",
                             f"--export_base={base}"], cwd=testing.REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=600, preexec_fn=_limit_file_size(20_000))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {base / 'rs_hashing' / '1'}: the export could not be written ("), last
    assert last.endswith("; nothing was left behind") and "Traceback" not in result.stderr
    assert os.listdir(base / "rs_hashing") == []


def test_killed_exports_staging_folders_are_removed_by_the_next_export(tmp_path, hashing_model, monkeypatch):
    model_dir = tmp_path / "rs_hashing"
    model_dir.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    host = serving_export._host()
    names = {"killed": f".2.partial-{gone.pid}@{host}.abc123_x", "live": f".3.partial-{os.getppid()}@{host}.def456",
             "other_host": f".4.partial-{gone.pid}@elsewhere.ghi789", "old_style": ".5.partial-k2j4h5g6",
             "new_old_style": ".6.partial-zz9yy8xx", "not_staging": ".partial-notes"}
    for name in names.values():
        (model_dir / name).mkdir()
        (model_dir / name / "saved_model.pb").write_bytes(b"half")
    os.utime(model_dir / names["old_style"], (0, 0))  # changed before this process began
    staging = {}

    class FakeArchive:
        def write_out(self, path, verbose=True):
            staging["name"] = os.path.basename(path)
            (model_dir / staging["name"] / "saved_model.pb").write_bytes(b"stub")

    monkeypatch.setattr(serving_export, "build_export_archive", lambda *limits: FakeArchive())
    path = serving_export.export_savedmodel(hashing_model, str(tmp_path), warmup=False)
    assert re.fullmatch(rf"\.1\.partial-{os.getpid()}@{re.escape(host)}\.\w+", staging["name"])
    left = sorted(os.listdir(model_dir))
    assert left == sorted(["1", names["live"], names["other_host"], names["new_old_style"], names["not_staging"]])
    assert os.path.basename(path) == "1"


def test_limits_are_checked_and_recorded(tmp_path, hashing_model, export_path):
    with open(os.path.join(export_path, serving_export.INFO_FILE), encoding="utf-8") as f:
        assert json.load(f)["limits"] == {"max_pixels": serving_export.DEFAULT_MAX_PIXELS,
                                          "max_batch": serving_export.DEFAULT_MAX_BATCH}
    for kwargs in ({"max_pixels": 0}, {"max_batch": -1}, {"max_batch": True}, {"max_pixels": 1.5}):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))}=.* must be a positive integer"):
            serving_export.export_savedmodel(hashing_model, str(tmp_path), warmup=False, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"model_name": "../x"}, "model_name"), ({"model_name": ".hidden"}, "model_name"),
    ({"version": -1}, "non-negative integer"), ({"version": "2"}, "non-negative integer"),
])
def test_bad_model_name_or_version(tmp_path, hashing_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        serving_export.export_savedmodel(hashing_model, str(tmp_path), warmup=False, **kwargs)


# ----------------------------------------------------------------- the serving contract

def test_signature_defs_as_the_server_reads_them(server):
    signatures = server.signatures
    assert set(serving_export.SIGNATURES) | {"serving_default"} <= set(signatures)
    expected_inputs = {"encode_text": ("text", tf.string, [-1]),
                       "serving_default": ("text", tf.string, [-1]),
                       "encode_image": ("image_bytes", tf.string, [-1]),
                       "encode_image_pixels": ("image", tf.uint8, [-1, -1, -1, 3])}
    for name, (key, dtype, shape) in expected_inputs.items():
        signature = signatures[name]
        assert signature.method_name == "tensorflow/serving/predict"
        assert list(signature.inputs) == [key]
        assert signature.inputs[key].dtype == dtype.as_datatype_enum
        assert [d.size for d in signature.inputs[key].tensor_shape.dim] == shape
        outputs = {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in signature.outputs.items()}
        assert outputs == {"code": (tf.int8.as_datatype_enum, [-1, K]),
                           "packed": (tf.uint8.as_datatype_enum, [-1, K // 8]),
                           "hash": (tf.float32.as_datatype_enum, [-1, K])}


def test_predict_round_trip_matches_the_keras_model(server, hashing_model, tmp_path):
    captions = np.array([c.encode() for c in tiny_run.CAPTIONS], dtype=object)
    for signature in ("encode_text", "serving_default"):
        outputs = _response(server.predict(_request(signature, {"text": captions})))
        _check_outputs(outputs, hashing_model.text_hash(list(tiny_run.CAPTIONS)))

    images = [open(p, "rb").read() for p in tiny_run.write_images(str(tmp_path), count=4)]
    outputs = _response(server.predict(_request("encode_image", {"image_bytes": np.array(images, dtype=object)})))
    _check_outputs(outputs, hashing_model.image_hash_from_bytes(images))

    pixels = np.random.default_rng(1).integers(0, 256, size=(3, 23, 37, 3)).astype(np.uint8)
    outputs = _response(server.predict(_request("encode_image_pixels", {"image": pixels})))
    resized = resize_image(tf.constant(pixels), tiny_run.IMAGE_SIZE).numpy()
    _check_outputs(outputs, hashing_model.image_hash_from_pixels(resized))


def test_a_fine_tuned_run_serves_the_codes_of_its_tuned_tops(tmp_path_factory, tmp_path):
    tuned = tiny_run.tuned_tower_model(str(tmp_path_factory.mktemp("tuned")))
    server = SignatureSession(serving_export.export_savedmodel(tuned, str(tmp_path / "serving")))
    captions = list(tiny_run.CAPTIONS)
    for signature in ("encode_text", "serving_default"):
        outputs = _response(server.predict(_request(signature, {"text": np.array(captions, dtype=object)})))
        _check_outputs(outputs, tuned.text_hash(captions))
    images = [open(p, "rb").read() for p in tiny_run.write_images(str(tmp_path / "images"), count=4)]
    outputs = _response(server.predict(_request("encode_image", {"image_bytes": np.array(images, dtype=object)})))
    reference = tuned.image_hash_from_bytes(images)
    _check_outputs(outputs, reference)
    pixels = np.stack([tuned.preprocess_image_bytes(image) for image in images])
    # The pretrained top would give other codes: the export holds the tuned one.
    activations = tuned.towers.image_bottom(pixels)
    pretrained = np.asarray(tuned.heads.image_head(tuned.towers.image_top()(activations)))
    assert np.abs(pretrained - reference).max() > 1e-2


def test_loaded_signatures_give_the_same_codes(export_path, server, hashing_model):
    loaded = tf.saved_model.load(export_path)
    function = loaded.signatures["encode_text"]
    assert set(function.structured_input_signature[1]) == {"text"}
    assert set(function.structured_outputs) == set(serving_export.OUTPUTS)
    outputs = function(text=tf.constant(list(tiny_run.CAPTIONS)))
    session_outputs = server.run("encode_text", {"text": np.array(tiny_run.CAPTIONS, dtype=object)})
    np.testing.assert_array_equal(outputs["code"].numpy(), session_outputs["code"])
    np.testing.assert_array_equal(outputs["packed"].numpy(), session_outputs["packed"])


def test_warmup_requests_replay_through_the_signatures(export_path, server):
    path = os.path.join(export_path, serving_export.WARMUP_FILE)
    signatures = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert request.model_spec.name == "rs_hashing"
        signatures.append(request.model_spec.signature_name)
        outputs = _response(server.predict(request.SerializeToString()))
        assert outputs["code"].shape[1] == K and set(np.unique(outputs["code"])) <= {-1, 1}
    assert sorted(signatures) == sorted(serving_export.SIGNATURES)


def test_wrong_dtypes_and_shapes_are_rejected_with_clear_errors(export_path, server):
    signatures = tf.saved_model.load(export_path).signatures
    pixels = signatures["encode_image_pixels"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8"):
        pixels(image=tf.zeros([1, 8, 8, 3], tf.float32))
    for shape in ([1, 8, 8, 4], [8, 8, 3]):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"Shape of tensor image \[[\d,]+\] is not compatible with expected "
                                 r"shape \[\?,\?,\?,3\]"):
            pixels(image=tf.zeros(shape, tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Shape of tensor text .* expected shape \[\?\]"):
        signatures["encode_text"](text=tf.constant([["a road"]]))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="string"):
        signatures["encode_text"](text=tf.constant([1, 2]))
    # The item is named (tests/export/serving_input_test.py has every refusal).
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[0\] cannot be decoded"):
        signatures["encode_image"](image_bytes=tf.constant([b"not an image"]))
    # The TF1 feed path the server's Python clients know checks shapes before running.
    with pytest.raises(ValueError, match="Cannot feed value of shape"):
        server.run("encode_image_pixels", {"image": np.zeros([1, 8, 8, 4], np.uint8)})


def test_saved_model_cli_shows_the_signatures(export_path):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip(f"saved_model_cli not found beside {sys.executable}")
    result = subprocess.run([cli, "show", "--dir", export_path, "--all"], capture_output=True,
                            text=True, timeout=240, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for name in ("encode_text", "encode_image", "encode_image_pixels", "serving_default"):
        assert f"signature_def['{name}']" in out
    assert "inputs['image'] tensor_info:\n        dtype: DT_UINT8\n        shape: (-1, -1, -1, 3)" in out
    assert "inputs['image_bytes'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in out
    assert f"outputs['packed'] tensor_info:\n        dtype: DT_UINT8\n        shape: (-1, {K // 8})" in out
    assert f"outputs['code'] tensor_info:\n        dtype: DT_INT8\n        shape: (-1, {K})" in out


# ----------------------------------------------------------------- REST bodies in the docs

def _rest_to_tensors(body: dict, input_names: list[str]) -> dict:
    """TF Serving's REST decoding: row ("instances") or columnar ("inputs") format;
    {"b64": ...} objects are bytes."""
    def decode(value):
        if isinstance(value, dict) and set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value.encode() if isinstance(value, str) else value

    if "instances" in body:
        rows = body["instances"]
        if len(input_names) == 1 and not (isinstance(rows[0], dict) and set(rows[0]) == set(input_names)):
            return {input_names[0]: [decode(r) for r in rows]}
        return {name: [decode(r[name]) for r in rows] for name in input_names}
    columns = body["inputs"]
    if not isinstance(columns, dict) or set(columns) != set(input_names):
        columns = {input_names[0]: columns}
    return {name: decode(value) for name, value in columns.items()}


def _doc_bodies() -> list[tuple[str, str, dict]]:
    """(kind, signature, body) of every golden JSON block in docs/serving.md, each
    preceded by a line `<!-- golden: request|response SIGNATURE -->`."""
    with open(DOCS, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"<!-- golden: (request|response) (\w+) -->\s*```json\n(.*?)```", text, re.S)
    return [(kind, signature, json.loads(body)) for kind, signature, body in blocks]


def test_golden_rest_bodies_in_the_docs_are_valid(server):
    bodies = _doc_bodies()
    requests = [(s, b) for kind, s, b in bodies if kind == "request"]
    assert {("instances" in b, s) for s, b in requests} >= {
        (True, "encode_text"), (False, "encode_text"), (True, "encode_image"),
        (False, "encode_image"), (True, "encode_image_pixels")}
    dtypes = {"text": object, "image_bytes": object, "image": np.uint8}
    for signature, body in requests:
        names = list(server.signatures[signature].inputs)
        inputs = {k: np.array(v, dtype=dtypes[k]) for k, v in _rest_to_tensors(body, names).items()}
        outputs = server.run(signature, inputs)
        assert outputs["code"].shape == (len(next(iter(inputs.values()))), K)
    for _, signature, body in [b for b in bodies if b[0] == "response"]:
        rows = body.get("predictions") or [dict(zip(body["outputs"], v)) for v in zip(*body["outputs"].values())]
        for row in rows:
            bits = len(row["code"])
            assert set(row) == set(serving_export.OUTPUTS) and len(row["hash"]) == bits
            assert row["packed"] == list(np.packbits(np.array(row["code"]) > 0))
            assert np.array_equal(np.array(row["code"]), binarize(row["hash"]))


# ----------------------------------------------------------------- RSICD-AID parity

@pytest.mark.slow
@pytest.mark.skipif(not testing.has_shared_rsicd(), reason=testing.NO_SHARED_REASON)
def test_savedmodel_codes_equal_keras_codes_on_rsicd(tmp_path):
    """200 RSICD-AID JPEGs and captions through the whole exported graph vs the Keras
    path (image_pipeline -> encoder -> head), bit for bit, with the real encoders.
    RS_HASHING_EXPORT_RUN may name a trained run; otherwise the heads are untrained
    (seeded), which tests the same graph."""
    from rs_hashing import config as config_lib
    from rs_hashing.export.image_sample import ImageSample
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
    images = [open(p, "rb").read() for p in sample.paths]
    path = serving_export.export_savedmodel(hashing_model, str(tmp_path), warmup=False)
    signatures = tf.saved_model.load(path).signatures
    served_images = np.concatenate([signatures["encode_image"](image_bytes=tf.constant(images[i:i + 50]))["code"]
                                    for i in range(0, len(images), 50)])
    served_text = np.concatenate([signatures["encode_text"](text=tf.constant(list(sample.captions[i:i + 50])))["code"]
                                  for i in range(0, len(images), 50)])
    np.testing.assert_array_equal(served_images, binarize(hashing_model.image_hash_from_bytes(images)))
    np.testing.assert_array_equal(served_text, binarize(hashing_model.text_hash(list(sample.captions))))
