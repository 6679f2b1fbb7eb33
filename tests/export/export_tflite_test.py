"""End to end: the real `export.export_tflite` entry point on a tiny run."""

import json
import os

from tests import testing
from tests import tiny_run

def _run(*args):
    return testing.run_module("export.export_tflite", *args)


def test_writes_both_models_and_the_report(tmp_path):
    run = tiny_run.make_tiny_run(str(tmp_path / "tiny"), saved_encoders=True)
    images = tmp_path / "images"
    tiny_run.write_images(str(images), count=4)
    out = tmp_path / "edge" / "codes.tflite"
    result = _run(f"--run_dir={run}", f"--out={out}", "--quantization=fp32", f"--images={images}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["agreement"]["bit_agreement"] == 1.0 and summary["agreement"]["count"] == 4
    assert summary["text_model"]["written"] and summary["text_model"]["agreement"] is None  # No captions.
    assert sorted(os.listdir(out.parent)) == ["codes.json", "codes.tflite", "codes_text.tflite"]

    result = _run(f"--run_dir={run}", f"--out={tmp_path / 'codes.lite'}", f"--images={images}")
    assert result.returncode != 0 and "--out must end in .tflite" in result.stderr
