import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.data import loaders
from rs_hashing.errors import TrainingError
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.hashing_model import HashingModel
from rs_hashing.training import callbacks, evaluation, trainer
from tests import testing

CLASSES = ("beach", "forest", "harbor", "meadow")


def _make_store(root, per_class=24, seed=0):
    """A dataset of 4 classes whose image and text features are noisy views of a
    class centroid through two different random projections: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    items = [{"filename": f"{c}_{i}.jpg", "captions": [f"{c} {i} one", f"{c} {i} two"]}
             for c in CLASSES for i in range(per_class)]
    caption_file = testing.write_karpathy(str(root), items, make_images=False)
    os.makedirs(root / "RSICD_images", exist_ok=True)
    data = config_lib.DataConfig(dataset="karpathy", caption_file=caption_file, image_dir=str(root / "RSICD_images"))
    dataset = loaders.load_dataset(data, check_images=False)
    centroids = rng.normal(size=(len(CLASSES), 8))
    to_image, to_text = rng.normal(size=(8, 12)), rng.normal(size=(8, 10))
    latent = centroids[dataset.labels] + 0.6 * rng.normal(size=(len(dataset), 8))
    caption_latent = np.repeat(latent, 2, axis=0) + 0.3 * rng.normal(size=(2 * len(dataset), 8))
    arrays = {"image": latent @ to_image, "image_aug": (latent + 0.1) @ to_image,
              "text": caption_latent @ to_text, "text_aug": (caption_latent - 0.1) @ to_text}
    FeatureStore.write(str(root / "features"), arrays, dataset, {})
    return data, str(root / "features")


def _config(data, features, workdir, **overrides):
    config = testing.tiny_config(**overrides)
    return config_lib.Config(data=data, features=config_lib.FeatureConfig(features=features),
                             model=config.model,
                             train=config_lib.apply_overrides(config, {"run_dir": workdir}).train)


class Killed(Exception):
    """Stands for the process being killed (a run folder is then left as it was)."""


def _kill_after_checkpoint(monkeypatch, number):
    """Makes training stop, as if killed, right after it saved checkpoint `number`."""
    original = callbacks.EpochCheckpoint.on_epoch_end

    def save_then_die(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.number_offset + epoch + 1 == number:
            monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", original)
            raise Killed(number)

    monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", save_then_die)


@pytest.fixture(autouse=True)
def _deterministic():
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()


def test_learning_rate_schedule():
    t = config_lib.TrainConfig(learning_rate=1.0, lr_decay=0.5, lr_decay_epochs=(1, 3))
    assert [trainer.learning_rate_at(t, e) for e in range(5)] == [1.0, 0.5, 0.5, 0.25, 0.25]


def test_training_writes_the_run_folder_and_retrieves(tmp_path):
    data, features = _make_store(tmp_path / "data")
    workdir = str(tmp_path / "run")
    config = _config(data, features, workdir, epochs=25, learning_rate=3e-3, bits=16, hidden_dim=32,
                     **{"train.batch_size": 16})
    results = trainer.train(config, verbose=0)
    for name in ("config.json", "history.csv", "metrics.json", "codes.npz", "model.weights.h5",
                 "model_config.json", "pr_curve.png", "training_curves.png", "checkpoints", "tensorboard"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert config_lib.load_config(workdir) == config
    codes = np.load(os.path.join(workdir, "codes.npz"))
    assert codes["query_image"].shape[1] == 16 and set(np.unique(codes["query_image"])) <= {-1, 1}
    assert len(codes["query_labels"]) == len(codes["query_image"])
    # 4 balanced classes: random codes give about 0.25; a trained model retrieves far better.
    assert results["map@20"]["i2t"] > 0.6 and results["map@20"]["t2i"] > 0.6, results["map@20"]
    history = trainer._read_history(os.path.join(workdir, "history.csv"))
    assert len(history["loss"]) == 25 and np.all(np.isfinite(history["loss"]))
    assert history["contrastive_inter"][-1] < history["contrastive_inter"][0]
    # The reloaded run gives the codes the run evaluated with (codes.npz), bit for bit.
    model = HashingModel.from_run(workdir)
    _, store, split, _ = trainer.prepare(config)
    reloaded = evaluation.encode_sets(model.heads, evaluation.retrieval_features(store, split))
    for key in evaluation.CODE_KEYS:
        np.testing.assert_array_equal(reloaded[key], codes[key])
    assert os.path.isfile(os.path.join(workdir, "encoders.json"))


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    data, features = _make_store(tmp_path / "data")
    full = str(tmp_path / "full")
    trainer.train(_config(data, features, full, epochs=4), verbose=0)
    resumed = str(tmp_path / "resumed")
    _kill_after_checkpoint(monkeypatch, 2)
    with pytest.raises(Killed):
        trainer.train(_config(data, features, resumed, epochs=4), verbose=0)
    results = trainer.train(_config(data, features, resumed, epochs=4), verbose=0)
    assert results["resumed_from_epoch"] == 2
    a, b = np.load(os.path.join(full, "codes.npz")), np.load(os.path.join(resumed, "codes.npz"))
    for key in ("query_image", "query_text", "database_image", "database_text"):
        np.testing.assert_array_equal(a[key], b[key])
    history = trainer._read_history(os.path.join(resumed, "history.csv"))
    assert len(history["loss"]) == 4
    np.testing.assert_allclose(history["loss"], trainer._read_history(os.path.join(full, "history.csv"))["loss"],
                               rtol=1e-5)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data, features = _make_store(tmp_path / "data")
    workdir = str(tmp_path / "run")
    _kill_after_checkpoint(monkeypatch, 2)
    with pytest.raises(Killed):
        trainer.train(_config(data, features, workdir, epochs=4), verbose=0)

    def poison(pairs):
        pairs.pair_weights[:] = np.nan

    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 3, step \d+.*last good checkpoint"):
        trainer.train(_config(data, features, workdir, epochs=4), verbose=0, pairs_hook=poison)
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert latest.endswith("ckpt-2")


def test_missing_feature_store_is_a_clear_error(tmp_path):
    data, _ = _make_store(tmp_path / "data")
    with pytest.raises(ValueError, match="features is empty"):
        trainer.train(_config(data, "", str(tmp_path / "run")), verbose=0)
