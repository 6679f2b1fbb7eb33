"""End to end: the real `train.demo` entry point on the smoke preset (tiny encoders)."""

import json
import os
import subprocess
import sys

import numpy as np

from tests import testing


def test_demo_entry_point_runs_the_main_job(tmp_path):
    env = dict(os.environ, RS_HASHING_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "train.demo", "--preset=smoke", f"--workdir={workdir}", "--epochs=3",
         "--query=open water of a lake"],
        cwd=testing.REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "real Sentinel-2 pixels, rule-derived labels, generated captions" in out
    assert "| mAP@20 (authors') |" in out and "query: 'open water of a lake'" in out
    assert out.count("hamming=") == 5
    # Tiny random encoders are never saved, so the smoke run cannot be exported; it says so.
    assert "export skipped:" in out
    run = workdir / "run"
    for name in ("config.json", "metrics.json", "codes.npz", "model.weights.h5", "history.csv"):
        assert (run / name).exists(), name
    assert any(f.startswith("ckpt-3") for f in os.listdir(run / "checkpoints"))
    assert (workdir / "features" / "manifest.json").exists()
    with open(run / "config.json") as f:
        assert json.load(f)["features"]["image_encoder"] == "tiny_cnn"
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    for value in summary["metrics"]["map@20"].values():
        assert 0.0 <= value <= 1.0
    losses = np.genfromtxt(run / "history.csv", delimiter=",", names=True)["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))


def test_bad_data_dir_is_a_one_line_error(tmp_path):
    result = testing.run_module("train.train", "--preset=rsicd", f"--data_dir={tmp_path}/nowhere",
                                f"--features={tmp_path}/f", f"--run_dir={tmp_path}/run")
    assert result.returncode != 0
    assert "error: " in result.stderr and "data folder does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, no start-up logging
