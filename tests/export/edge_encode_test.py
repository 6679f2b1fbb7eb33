"""End to end: `export.edge_encode`, the ground-station command, in a fresh interpreter:
its output and that it imports neither TensorFlow, Keras nor absl."""

import re
import subprocess
import sys

import pytest

from rs_hashing.export import tflite_export
from rs_hashing.edge.edge_encoder import EdgeEncoder
from tests import testing
from tests import tiny_run


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    hashing_model = tiny_run.tiny_model(str(root / "tiny"))
    path = str(root / "codes.tflite")
    with open(path, "wb") as f:
        f.write(tflite_export.convert(tflite_export.image_hashing_function(hashing_model), "fp32"))
    return path


def _run(*args):
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "export.edge_encode", *args],
                          cwd=testing.REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_prints_file_and_hex_code_per_image_without_tensorflow(model_path, tmp_path):
    images = tiny_run.write_images(str(tmp_path / "images"), count=5)
    result = _run(f"--model={model_path}", "--encode_batch_size=2", images[0], str(tmp_path / "images"))
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert imported and not imported & {"tensorflow", "keras", "tf_keras", "absl"}, sorted(imported)
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [images[0]] + sorted(images)
    packed = EdgeEncoder(model_path).encode_files([images[0]] + sorted(images))["packed"]
    assert [line.split("\t")[1] for line in lines] == [row.tobytes().hex() for row in packed]
    assert all(re.fullmatch(r"[0-9a-f]{%d}" % (tiny_run.BITS // 4), line.split("\t")[1]) for line in lines)


def test_bad_images_are_reported_and_set_the_exit_status(model_path, tmp_path):
    images = tiny_run.write_images(str(tmp_path / "images"), count=2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = _run(f"--model={model_path}", images[0], str(broken), images[1])
    assert result.returncode == 1
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [images[0], images[1]]
    assert "broken.png: cannot decode image" in result.stderr

    result = _run(f"--model={tmp_path / 'missing.tflite'}", images[0])
    assert result.returncode == 2 and "no such TFLite model file" in result.stderr
