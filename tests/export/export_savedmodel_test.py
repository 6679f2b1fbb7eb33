"""End to end: the real `export.export_savedmodel` entry point on a tiny run."""

import json
import os

from rs_hashing.export import serving_export
from tests import testing
from tests import tiny_run

def _run(*args):
    return testing.run_module("export.export_savedmodel", *args)


def test_exports_the_next_version_with_warmup_and_refuses_bad_runs(tmp_path):
    run = tiny_run.make_tiny_run(str(tmp_path / "tiny"), saved_encoders=True)
    base = tmp_path / "serving"
    os.makedirs(base / "hashing" / "5")
    result = _run(f"--run_dir={run}", f"--export_base={base}", "--model_name=hashing")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["export"] == str(base / "hashing" / "6") and summary["bits"] == tiny_run.BITS
    for name in ("saved_model.pb", serving_export.WARMUP_FILE, serving_export.INFO_FILE):
        assert os.path.exists(base / "hashing" / "6" / name), name
    assert sorted(os.listdir(base / "hashing")) == ["5", "6"]

    result = _run(f"--run_dir={tmp_path / 'nowhere'}", f"--export_base={base}")
    assert result.returncode != 0 and "error: " in result.stderr
    assert "nowhere: run folder does not exist" in result.stderr
