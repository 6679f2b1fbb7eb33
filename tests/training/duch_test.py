"""Tests for rs_hashing.training.duch: the DUCH driver's run folder, retrieval, resume
and failure modes."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.errors import TrainingError
from rs_hashing.hashing_model import HashingModel
from rs_hashing.training import duch, evaluation, run_kit
from tests.training.tiny_store import Killed, kill_after_checkpoint, make_store, store_config


@pytest.fixture(autouse=True)
def _deterministic():
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()


def test_training_writes_the_run_folder_and_retrieves(tmp_path):
    data, features = make_store(tmp_path / "data")
    workdir = str(tmp_path / "run")
    config = store_config(data, features, workdir, epochs=25, learning_rate=3e-3, bits=16, hidden_dim=32,
                          **{"train.batch_size": 16})
    results = duch.train(config, verbose=0)
    for name in ("config.json", "history.csv", "metrics.json", "codes.npz", "model.weights.h5",
                 "model_config.json", "pr_curve.png", "training_curves.png", "checkpoints", "tensorboard"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert config_lib.load_config(workdir) == config
    codes = np.load(os.path.join(workdir, "codes.npz"))
    assert codes["query_image"].shape[1] == 16 and set(np.unique(codes["query_image"])) <= {-1, 1}
    assert len(codes["query_labels"]) == len(codes["query_image"])
    # 4 balanced classes: random codes give about 0.25; a trained model retrieves far better.
    assert results["map@20"]["i2t"] > 0.6 and results["map@20"]["t2i"] > 0.6, results["map@20"]
    history = run_kit.read_history(os.path.join(workdir, "history.csv"))
    assert len(history["loss"]) == 25 and np.all(np.isfinite(history["loss"]))
    assert history["contrastive_inter"][-1] < history["contrastive_inter"][0]
    # The reloaded run gives the codes the run evaluated with (codes.npz), bit for bit.
    model = HashingModel.from_run(workdir)
    prepared = run_kit.prepare(config)
    reloaded = evaluation.encode_sets(model.heads, evaluation.retrieval_features(prepared.store, prepared.split))
    for key in evaluation.CODE_KEYS:
        np.testing.assert_array_equal(reloaded[key], codes[key])
    assert os.path.isfile(os.path.join(workdir, "encoders.json"))


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    data, features = make_store(tmp_path / "data")
    # 48 training pairs at batch 10: every epoch ends with a partial batch of 8.
    overrides = {"epochs": 4, "train.batch_size": 10}
    full = str(tmp_path / "full")
    duch.train(store_config(data, features, full, **overrides), verbose=0)
    resumed = str(tmp_path / "resumed")
    kill_after_checkpoint(monkeypatch, 2)
    with pytest.raises(Killed):
        duch.train(store_config(data, features, resumed, **overrides), verbose=0)
    results = duch.train(store_config(data, features, resumed, **overrides), verbose=0)
    assert results["resumed_from_epoch"] == 2
    a, b = np.load(os.path.join(full, "codes.npz")), np.load(os.path.join(resumed, "codes.npz"))
    for key in ("query_image", "query_text", "database_image", "database_text"):
        np.testing.assert_array_equal(a[key], b[key])
    history = run_kit.read_history(os.path.join(resumed, "history.csv"))
    assert len(history["loss"]) == 4
    np.testing.assert_allclose(history["loss"], run_kit.read_history(os.path.join(full, "history.csv"))["loss"],
                               rtol=1e-5)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data, features = make_store(tmp_path / "data")
    workdir = str(tmp_path / "run")
    kill_after_checkpoint(monkeypatch, 2)
    with pytest.raises(Killed):
        duch.train(store_config(data, features, workdir, epochs=4), verbose=0)

    def poison(pairs):
        pairs.pair_weights[:] = np.nan

    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 3, step \d+.*last good checkpoint"):
        duch.train(store_config(data, features, workdir, epochs=4), verbose=0, pairs_hook=poison)
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert latest.endswith("ckpt-2")


def test_missing_feature_store_is_a_clear_error(tmp_path):
    data, _ = make_store(tmp_path / "data")
    with pytest.raises(ValueError, match="features is empty"):
        duch.train(store_config(data, "", str(tmp_path / "run")), verbose=0)
