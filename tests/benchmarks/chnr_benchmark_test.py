"""The CHNR benchmark's reuse of a clean DUCH run at p = 0."""

import json
import os

import pytest

from benchmarks import chnr_benchmark
from rs_hashing import config as config_lib
from tests.testing import run_module, tiny_config


def _finished_run(root: str, config: config_lib.Config, i2t: float) -> str:
    run = os.path.join(root, "clean_duch")
    os.makedirs(run)
    config_lib.save_config(config, run)
    with open(os.path.join(run, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump({"map@20": {"i2t": i2t, "t2i": 0.5}}, f)
    return run


def test_reuses_a_clean_run_that_differs_only_in_paths_and_noise_fields(tmp_path):
    # Also in the tops' learning-rate factor, which a frozen run never reads (its default
    # changed after the clean runs were made).
    theirs = tiny_config(data_dir="/elsewhere/rsicd", features="/elsewhere/store", run_dir="/elsewhere/run",
                         tower_learning_rate_factor=0.1)
    ours = config_lib.apply_overrides(tiny_config(), {"clean_fraction": 0.2, "noise_weighting": "cubed",
                                                      "phase1_epochs": 3, "run_dir": str(tmp_path / "w")})
    run = _finished_run(str(tmp_path), theirs, i2t=0.625)
    assert chnr_benchmark.reuse_clean_duch(ours, run)["map@20"]["i2t"] == 0.625


def test_refuses_a_clean_run_with_other_training_settings(tmp_path):
    run = _finished_run(str(tmp_path), tiny_config(bits=16), i2t=0.625)
    with pytest.raises(ValueError, match=r"model\.bits: 16 there, 8 here"):
        chnr_benchmark.reuse_clean_duch(tiny_config(), run)


def test_only_duch_at_noise_zero_reuses(tmp_path):
    run = _finished_run(str(tmp_path), tiny_config(), i2t=0.625)
    with pytest.raises(ValueError, match="only DUCH at noise rate 0"):
        chnr_benchmark.reuse_clean_duch(tiny_config(noise_rate=0.3), run)
    with pytest.raises(ValueError, match="only DUCH at noise rate 0"):
        chnr_benchmark.reuse_clean_duch(tiny_config(method="chnr"), run)


def _write_metrics(folder, i2t, t2i, auc, seconds):
    os.makedirs(folder)
    with open(folder / "metrics.json", "w", encoding="utf-8") as f:
        json.dump({"map@20": {"i2t": i2t, "t2i": t2i}, "realised_noise_rate": 0.4, "train_seconds": seconds,
                   "detector": {"roc_auc": auc, "roc_auc_unprotected": auc - 0.01, "threshold": 0.5}}, f)


def test_report_only_tabulates_finished_runs_and_trains_nothing(tmp_path):
    out = tmp_path / "bench"
    _write_metrics(out / "chnr_noise0.5" / "seed42", 0.8, 0.875, 0.95, 12.0)
    result = run_module("benchmarks.chnr_benchmark", "--data_dir=/nowhere", "--features=/nowhere",
                        f"--out={out}", "--noise_rates=0,0.5", "--report_only", "--seeds=1", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{out}/duch_noise0.5/seed42: not finished, left out" in result.stdout
    assert sorted(os.listdir(out)) == ["chnr_noise0.5", "map_vs_noise.png", "results.md"]
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| 0.5 | 0.400 | - | - | 0.800 | 0.875 | - | - | 0.950 (0.940) | 0.500 | - | 12 |" in table
    assert "detector ROC-AUC on the noisy training pairs = 0.950 (target >= 0.90): PASS" in table


def test_seeds_are_reported_as_mean_and_sd_with_per_seed_gaps(tmp_path):
    out = tmp_path / "bench"
    _write_metrics(out / "chnr_noise0.5" / "seed42", 0.80, 0.90, 0.95, 10.0)
    _write_metrics(out / "chnr_noise0.5" / "seed43", 0.70, 0.80, 0.97, 14.0)
    _write_metrics(out / "duch_noise0.5" / "seed42", 0.60, 0.85, 0.5, 20.0)
    _write_metrics(out / "duch_noise0.5" / "seed43", 0.70, 0.85, 0.5, 22.0)
    result = run_module("benchmarks.chnr_benchmark", "--data_dir=/nowhere", "--features=/nowhere",
                        f"--out={out}", "--noise_rates=0.5", "--report_only", "--seeds=2", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (out / "results.md").read_text(encoding="utf-8")
    # I->T: DUCH 0.65 +- 0.0707, CHNR 0.75 +- 0.0707; per-seed gaps 0.20 and 0.00: 0.100 +- 0.141.
    assert ("| 0.5 | 0.400 | 0.650 +- 0.071 | 0.850 +- 0.000 | 0.750 +- 0.071 | 0.850 +- 0.071 "
            "| 0.100 +- 0.141 | 0.000 +- 0.071 | 0.960 +- 0.014 (0.950 +- 0.014) | 0.500 | 21 | 12 |") in table
    assert "- p=0.5 i2t: CHNR - DUCH = +0.100 (target >= +0.05): PASS" in table
    assert "| 0.5 | CHNR | 43 | 0.700 | 0.800 | - | - | 0.970 |" in table
