"""End to end: `rs-hashing train` on the smoke preset, DUCH and CHNR, on a tiny learnable
feature store (the command's own process, as a user runs it)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rs_hashing import config as config_lib
from tests import testing
from tests.training.tiny_store import make_image_archive, make_store

# 4 balanced classes, 9 queries: random 16-bit codes give an authors' mAP@20 of 0.30 on
# average, 0.37 in the luckiest 1% of draws.
CHANCE = 0.3


def _train(data: config_lib.DataConfig, features: str, run_dir: str, *flags: str):
    """`python -m rs_hashing.cli train --preset=smoke` on the tiny store."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "rs_hashing.cli", "train", "--preset=smoke", "--dataset=karpathy",
         f"--caption_file={data.caption_file}", f"--image_dir={data.image_dir}", f"--features={features}",
         f"--run_dir={run_dir}", "--learning_rate=3e-3", "--batch_size=16", *flags],
        cwd=testing.REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def _extract(data: config_lib.DataConfig, features: str, *flags: str):
    """`python -m rs_hashing.cli extract-features --preset=smoke` on an image archive."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "rs_hashing.cli", "extract-features", "--preset=smoke", "--dataset=karpathy",
         f"--caption_file={data.caption_file}", f"--image_dir={data.image_dir}", f"--features={features}", *flags],
        cwd=testing.REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("train_command"))


def _finished(run_dir: str, result, better_than: float = CHANCE + 0.15) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""  # no TensorFlow start-up lines, no warnings
    # The command prints a line per epoch, then the mAPs as JSON.
    printed = json.loads(result.stdout[result.stdout.rindex("{\n  \"map@"):])
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert printed == {key: value for key, value in metrics.items() if key.startswith("map@")}
    for name in ("config.json", "history.csv", "model.weights.h5", "model_config.json", "encoders.json", "codes.npz",
                 "pr_curve.png", "training_curves.png"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    # 48 training pairs at batch 16, 3 batches an epoch: better than chance in every direction.
    assert min(metrics["map@20"].values()) > better_than, metrics["map@20"]
    return metrics


def test_train_duch(store, tmp_path):
    data, features = store
    run_dir = str(tmp_path / "duch")
    # The last 5 epochs rank by straight-through signs: the compiled step reads the switch.
    metrics = _finished(run_dir, _train(data, features, run_dir, "--method=duch", "--epochs=25",
                                        "--straight_through_epochs=5"))
    assert (metrics["epochs"], metrics["resumed_from_epoch"]) == (25, 0)
    assert "detector" not in metrics and not os.path.exists(os.path.join(run_dir, "detector.json"))
    config = config_lib.load_config(run_dir)
    assert (config.model.method, config.train.epochs, config.data.clean_fraction) == ("duch", 25, 0.0)
    assert config.train.straight_through_epochs == 5
    history = np.genfromtxt(os.path.join(run_dir, "history.csv"), delimiter=",", names=True)
    assert len(history) == 25 and np.all(np.isfinite(history["loss"]))
    assert history["contrastive_inter"][-1] < history["contrastive_inter"][0]


def test_train_chnr(store, tmp_path):
    data, features = store
    run_dir = str(tmp_path / "chnr")
    # A fifth of the pairs wrongly captioned; --clean_fraction left to CHNR's default (0.2).
    metrics = _finished(run_dir, _train(data, features, run_dir, "--method=chnr", "--noise_rate=0.2",
                                        "--phase1_epochs=10", "--phase2_epochs=15"))
    assert (metrics["epochs"], metrics["phase1_epochs"], metrics["phase2_epochs"]) == (25, 10, 15)
    assert 0 < metrics["realised_noise_rate"] < 0.5
    config = config_lib.load_config(run_dir)
    assert (config.model.method, config.data.clean_fraction, config.data.noise_rate) == ("chnr", 0.2, 0.2)
    with open(os.path.join(run_dir, "detector.json"), encoding="utf-8") as f:
        detector = json.load(f)
    assert detector["clean_subset_size"] == 10  # round(0.2 * 48): one partial batch an epoch in phase 1
    assert detector["num_training_pairs"] == 96 and detector["realised_noise_rate"] == metrics["realised_noise_rate"]
    assert metrics["detector"]["roc_auc"] == detector["roc_auc"]
    for name in ("detector.weights.h5", "detector_config.json", "detector_history.csv", "detector_scores.png",
                 "noise.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    history = np.genfromtxt(os.path.join(run_dir, "history.csv"), delimiter=",", names=True)
    assert len(history) == 25 and np.all(history["adversarial"] == 0.0)  # CHNR's loss set


def test_extract_and_train_with_trainable_encoder_tops(tmp_path):
    data = make_image_archive(tmp_path / "archive")
    features, run_dir = str(tmp_path / "store"), str(tmp_path / "run")
    # One stage: the tops train from the first epoch.
    tops = ("--image_trainable_stages=1", "--text_trainable_layers=1", "--tuned_epochs=0")
    extracted = _extract(data, features, "--image_size=16", *tops)
    assert extracted.returncode == 0, extracted.stderr[-3000:]
    summary = json.loads(extracted.stdout[extracted.stdout.index("{"):])
    assert (summary["towers"]["image_cut"], summary["towers"]["text_cut"]) == ("conv2", "transformer_layer_1")
    assert summary["towers"]["dtype"] == "float16" and summary["image_dim"] == 16
    # Training on another cut than the store's is refused with both named.
    refused = _train(data, features, run_dir, "--image_size=16", "--image_trainable_stages=2",
                     "--text_trainable_layers=1", "--tuned_epochs=0", "--epochs=2")
    assert refused.returncode != 0 and "image_trainable_stages=1, text_trainable_layers=1 in float16, but the " \
        "config trains on the activations of image_trainable_stages=2" in refused.stderr
    assert not os.path.exists(run_dir)
    result = _train(data, features, run_dir, "--image_size=16", *tops, "--epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    config = config_lib.load_config(run_dir)
    assert (config.model.image_trainable_stages, config.model.text_trainable_layers) == (1, 1)
    history = np.genfromtxt(os.path.join(run_dir, "history.csv"), delimiter=",", names=True)
    assert len(history) == 3 and np.all(np.isfinite(history["loss"]))


def test_the_default_two_stage_run_through_both_commands(tmp_path):
    """extract-features writes both stores of a two-stage run (the frozen one, and the
    image top's named after it: tests/features/extraction_test.py checks that it takes
    the caption arrays of the first); train trains the frozen stage in run_dir/frozen,
    then the tuned stage from its heads in run_dir; the same command again finds both
    finished; other epochs are refused."""
    data = make_image_archive(tmp_path / "archive")
    features, run_dir = str(tmp_path / "store"), str(tmp_path / "run")
    two_stages = ("--image_size=16", "--image_trainable_stages=1", "--tuned_epochs=2")
    extracted = _extract(data, features, *two_stages)
    assert extracted.returncode == 0, extracted.stderr[-3000:]
    frozen_store, tuned_store = features, features + "_image1"
    frozen_manifest, tuned_manifest = (json.load(open(os.path.join(p, "manifest.json"), encoding="utf-8"))
                                       for p in (frozen_store, tuned_store))
    assert "towers" not in frozen_manifest or not frozen_manifest["towers"]
    assert tuned_manifest["towers"]["image_trainable_stages"] == 1
    np.testing.assert_array_equal(np.load(os.path.join(tuned_store, "text.npy")),
                                  np.load(os.path.join(frozen_store, "text.npy")).astype(np.float16))

    result = _train(data, features, run_dir, *two_stages, "--epochs=3")
    # 16 training images of random-looking texture, 5 epochs: the run is checked, not its mAP.
    metrics = _finished(run_dir, result, better_than=0.0)
    assert "Frozen stage: 3 epochs" in result.stdout and "Tuned stage: 2 epochs" in result.stdout
    frozen = config_lib.load_config(os.path.join(run_dir, "frozen"))
    tuned = config_lib.load_config(run_dir)
    assert (frozen.model.image_trainable_stages, frozen.train.epochs, frozen.features.features) == (0, 3, features)
    assert (tuned.model.image_trainable_stages, tuned.train.epochs, tuned.features.features) == (1, 2, tuned_store)
    assert tuned.train.init_from == os.path.join(run_dir, "frozen")
    assert metrics["init_from"] == os.path.join(run_dir, "frozen") and metrics["epochs"] == 2
    assert metrics["frozen_stage"]["epochs"] == 3 and metrics["frozen_stage"]["map@20"] is not None
    assert len(np.genfromtxt(os.path.join(run_dir, "frozen", "history.csv"), delimiter=",", names=True)) == 3
    assert len(np.genfromtxt(os.path.join(run_dir, "history.csv"), delimiter=",", names=True)) == 2

    again = _train(data, features, run_dir, *two_stages, "--epochs=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Frozen stage: finished" in again.stdout and json.load(
        open(os.path.join(run_dir, "metrics.json"), encoding="utf-8"))["map@20"] == metrics["map@20"]
    before = os.path.getmtime(os.path.join(run_dir, "frozen", "metrics.json"))
    refused = _train(data, features, run_dir, *two_stages, "--epochs=4")
    assert refused.returncode != 0 and "train.epochs: 3 -> 4" in refused.stderr
    assert os.path.join(run_dir, "frozen", "config.json") in refused.stderr
    assert os.path.getmtime(os.path.join(run_dir, "frozen", "metrics.json")) == before
