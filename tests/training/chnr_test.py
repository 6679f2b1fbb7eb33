"""Tests for rs_hashing.training.chnr (and its chnr_detector helpers): loss set, weights,
stages, trusted-subset batches, learning-rate steps, run folder, resume."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.hashing_model import HashingModel
from rs_hashing.losses.nt_xent import nt_xent_loss
from rs_hashing.models.noise_detector import NoiseDetector
from rs_hashing.training import callbacks, chnr, chnr_detector, run_kit
from rs_hashing.training.binary_target_updater import BinaryTargetUpdater
from rs_hashing.training.training_pairs import TrainingPairs
from tests.training.tiny_store import FakeStore, fake_split, make_store, store_config

PHASE1, PHASE2 = 2, 2


@pytest.fixture(autouse=True)
def _deterministic():
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()


def _chnr_config(data, features, workdir, **overrides):
    data = dataclasses.replace(data, noise_rate=0.5, clean_fraction=0.25)
    # 48 training pairs, 12 of them trusted: phase 1 is one partial batch an epoch, phase 2
    # three full ones.
    # x0.8 after epochs 1, 2 and 3: within phase 1, at the phase boundary, within phase 2.
    values = dict(method="chnr", phase1_epochs=PHASE1, phase2_epochs=PHASE2, learning_rate=3e-3,
                  detector_learning_rate=1e-3, lr_decay_epochs=(1, 2, 3), **{"train.batch_size": 16})
    values.update(overrides)
    return store_config(data, features, workdir, **values)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted CHNR run on the tiny store (shared by the tests below)."""
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    root = tmp_path_factory.mktemp("chnr")
    data, features = make_store(root / "data")
    workdir = str(root / "run")
    config = _chnr_config(data, features, workdir)
    learning_rates = {}
    original = callbacks.StepDecay.on_epoch_begin

    def recording(self, epoch, logs=None):
        original(self, epoch, logs)
        learning_rates[epoch] = float(np.asarray(self.optimizer.learning_rate))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(callbacks.StepDecay, "on_epoch_begin", recording)
        results = chnr.train(config, verbose=0)
    return {"root": root, "data": data, "features": features, "workdir": workdir, "config": config,
            "results": results, "learning_rates": learning_rates}


def test_chnr_loss_set_is_weighted_inter_modal_plus_quantisation():
    config = store_config(config_lib.DataConfig(), "", "", method="chnr", bits=8, hidden_dim=16)
    model = run_kit.build_model(config, 12, 10, 16, **chnr.chnr_model_overrides(config))
    assert (model.contrastive_intra_image_weight, model.contrastive_intra_text_weight) == (0.0, 0.0)
    assert (model.adversarial_weight, model.bit_balance_weight, model.use_adversarial) == (0.0, 0.0, False)
    # The authors' 0.001 on batch sums, rescaled for mean terms: 2 * 0.001 * bits.
    assert model.quantization_weight == pytest.approx(2 * 0.001 * 8)
    duch = dataclasses.replace(config, model=dataclasses.replace(config.model, chnr_loss="duch"))
    assert chnr.chnr_model_overrides(duch) == {}


def test_zero_weight_removes_a_pairs_term_exactly():
    config = store_config(config_lib.DataConfig(), "", "", method="chnr", bits=8, hidden_dim=16)
    model = run_kit.build_model(config, 12, 10, 16, **chnr.chnr_model_overrides(config))
    model.compile()
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(4, 12)), "image_aug": rng.normal(size=(4, 12)),
             "text": rng.normal(size=(4, 10)), "text_aug": rng.normal(size=(4, 10))}
    batch = {k: v.astype("float32") for k, v in batch.items()}
    batch["index"] = np.arange(4, dtype="int32")
    weights = np.array([1.0, 0.0, 1.0, 1.0], "float32")
    terms = {k: float(v) for k, v in model.test_step(dict(batch, pair_weights=weights)).items()}

    codes = {k: np.asarray(v, "float64") for k, v in model.encode_views(batch).items()}
    per_item = np.asarray(nt_xent_loss(codes["image_codes"], codes["text_codes"]))
    assert terms["contrastive_inter"] == pytest.approx(per_item[[0, 2, 3]].mean(), rel=1e-5)
    targets = np.asarray(model.binary_targets)[:4]
    quantization = np.mean([np.mean((v - targets) ** 2) for v in codes.values()])
    l2 = 0.5 * model.hash_l2 * sum(float(np.sum(np.square(v))) for v in model._head_variables())
    # CHNR's objective: weighted inter-modal term + quantisation only.
    expected = per_item[[0, 2, 3]].mean() + model.quantization_weight * quantization + l2
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)
    # The zero-weighted pair's own term is gone: changing only its value leaves the loss.
    model.reset_metrics()
    all_zero = {k: float(v) for k, v in model.test_step(dict(batch, pair_weights=np.zeros(4, "float32"))).items()}
    assert all_zero["contrastive_inter"] == 0.0
    assert np.isfinite(all_zero["loss"])


def test_run_writes_the_duch_files_and_the_detectors(finished_run):
    workdir, results = finished_run["workdir"], finished_run["results"]
    for name in ("config.json", "history.csv", "metrics.json", "codes.npz", "model.weights.h5", "model_config.json",
                 "pr_curve.png", "training_curves.png", "checkpoints", "noise.json", "detector.weights.h5",
                 "detector_config.json", "detector.json", "detector_history.csv", "detector_scores.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert config_lib.load_config(workdir) == finished_run["config"]
    with open(os.path.join(workdir, "detector.json"), encoding="utf-8") as f:
        detector = json.load(f)
    with open(os.path.join(workdir, "noise.json"), encoding="utf-8") as f:
        noise = json.load(f)
    assert detector["realised_noise_rate"] == noise["realised_noise_rate"] == results["realised_noise_rate"]
    assert 0 < detector["realised_noise_rate"] < 0.5
    assert 0 <= detector["roc_auc"] <= 1 and 0 < detector["threshold"] < 1
    assert detector["threshold"] == pytest.approx((detector["real_mean_score"] + detector["fake_mean_score"]) / 2)
    assert detector["num_corrupted_pairs"] == 2 * noise["num_noisy"]  # two captions per image
    assert results["detector"]["roc_auc"] == detector["roc_auc"]
    assert results["epochs"] == PHASE1 + PHASE2
    assert results["map@20"]["i2t"] > 0 and results["map@20"]["t2i"] > 0
    history = run_kit.read_history(os.path.join(workdir, "history.csv"))
    assert len(history["loss"]) == PHASE1 + PHASE2 and np.all(np.isfinite(history["loss"]))
    assert history["adversarial"] == [0.0] * (PHASE1 + PHASE2)  # CHNR's loss set: no adversarial term
    assert len(run_kit.read_history(os.path.join(workdir, "detector_history.csv"))["loss"]) == PHASE1
    model = HashingModel.from_run(workdir)
    assert model.heads.use_adversarial is False


def test_phase2_leaves_the_detector_unchanged(finished_run):
    workdir = finished_run["workdir"]
    # detector.weights.h5 is written when the detector stage ends; the last checkpoint is
    # written after the last epoch of phase 2.
    after_phase1 = chnr_detector.load_detector(workdir)
    with open(os.path.join(workdir, "detector_config.json"), encoding="utf-8") as f:
        final = NoiseDetector.from_config(json.load(f))
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert latest.endswith(f"ckpt-{PHASE1 + PHASE1 + PHASE2}")
    holder = tf.train.Checkpoint(detector_trainer=tf.train.Checkpoint(detector=final))
    holder.read(latest).expect_partial()
    assert len(final.variables) == len(after_phase1.variables)
    for before, after in zip(after_phase1.variables, final.variables):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after), err_msg=before.path)
    assert not np.array_equal(np.asarray(final.get_layer("classifier").get_layer("logits").kernel),
                              np.asarray(NoiseDetector.from_config(final.get_config())
                                         .get_layer("classifier").get_layer("logits").kernel))


def test_killed_run_resumes_to_the_same_result(finished_run, monkeypatch):
    class Killed(Exception):
        pass

    original = callbacks.EpochCheckpoint.on_epoch_end
    kill_at = {1, PHASE1 + PHASE1 + 1}  # after detector epoch 1; after the first epoch of phase 2

    def save_then_maybe_die(self, epoch, logs=None):
        original(self, epoch, logs)
        number = self.number_offset + epoch + 1
        if number in kill_at:
            kill_at.discard(number)
            raise Killed(number)

    monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", save_then_maybe_die)
    workdir = str(finished_run["root"] / "resumed")
    config = _chnr_config(finished_run["data"], finished_run["features"], workdir)
    for _ in range(2):
        with pytest.raises(Killed):
            chnr.train(config, verbose=0)
    results = chnr.train(config, verbose=0)
    assert results["resumed_from_epoch"] == PHASE1 + 1
    a = np.load(os.path.join(finished_run["workdir"], "codes.npz"))
    b = np.load(os.path.join(workdir, "codes.npz"))
    for key in ("query_image", "query_text", "database_image", "database_text"):
        np.testing.assert_array_equal(a[key], b[key])
    assert results["detector"] == finished_run["results"]["detector"]


def test_chnr_without_a_clean_subset_is_a_clear_error(finished_run):
    data = dataclasses.replace(finished_run["data"], noise_rate=0.5, clean_fraction=0.0)
    config = store_config(data, finished_run["features"], str(finished_run["root"] / "no_clean"), method="chnr")
    with pytest.raises(ValueError, match="CHNR needs a trusted clean subset"):
        chnr.train(config, verbose=0)


def test_chnr_with_trainable_encoder_tops_is_refused_before_anything_is_written(tmp_path):
    data, features = make_store(tmp_path / "data")
    workdir = tmp_path / "run"
    config = store_config(data, features, str(workdir), method="chnr", image_trainable_stages=1)
    with pytest.raises(ValueError, match="image_trainable_stages=1, text_trainable_layers=0: CHNR trains on "
                                         "frozen features only"):
        chnr.train(config, verbose=0)
    assert not workdir.exists()


def test_method_chnr_defaults_to_a_fifth_clean_subset():
    assert config_lib.config_from_flags("rsicd", {"method": "chnr"}).data.clean_fraction == 0.2
    assert config_lib.config_from_flags("rsicd", {"method": "chnr", "clean_fraction": 0.3}).data.clean_fraction == 0.3
    assert config_lib.config_from_flags("rsicd", {"method": "duch"}).data.clean_fraction == 0.0


def test_learning_rate_steps_count_epochs_across_both_phases(finished_run):
    # Phase 1 is epochs 0-1 and phase 2 epochs 2-3 of one schedule.
    rates = finished_run["learning_rates"]
    assert sorted(rates) == [0, 1, 2, 3]
    np.testing.assert_allclose([rates[e] for e in range(4)], [3e-3, 3e-3 * 0.8, 3e-3 * 0.64, 3e-3 * 0.512],
                               rtol=1e-6)


def test_chnr_schedule_steps_after_epochs_1_51_and_101():
    config = config_lib.config_from_flags("rsicd", {"method": "chnr"})
    t = config.train
    assert (t.phase1_epochs + t.phase2_epochs, t.lr_decay_epochs) == (150, (1, 51, 101))
    # 0-based epochs around each step: the rate of epoch e+1 (1-based) onwards.
    rates = {epoch: run_kit.learning_rate_at(t, epoch) / t.learning_rate for epoch in (0, 1, 50, 51, 100, 101, 149)}
    assert rates == pytest.approx({0: 1.0, 1: 0.8, 50: 0.8, 51: 0.64, 100: 0.64, 101: 0.512, 149: 0.512})
    # DUCH keeps the papers' two steps; a given schedule is kept.
    assert config_lib.config_from_flags("rsicd", {"method": "duch"}).train.lr_decay_epochs == (1, 51)
    given = config_lib.config_from_flags("rsicd", {"method": "chnr", "lr_decay_epochs": [1, 51]})
    assert tuple(given.train.lr_decay_epochs) == (1, 51)


def test_phase1_batches_every_trusted_item_once_an_epoch():
    # 5000 training items (RSICD's), 20% trusted: 1000 pairs at batch 256.
    store = FakeStore([1] * 10000)
    split = fake_split(10000, [0] * 10000)
    noise = NoisyPairs.inject(np.zeros(5000, int), 0.0, seed=0, clean_fraction=0.2)
    trusted = chnr.trusted_pairs(store, split, noise)
    trusted_ids = np.flatnonzero(noise.protected)
    assert len(trusted) == 1000 and trusted.steps_per_epoch("one", 256) == 4
    for epoch in range(2):
        batches = list(trusted.batches("one", 256, seed=0, first_epoch=epoch, epochs=epoch + 1))
        assert [len(batch["index"]) for batch in batches] == [256, 256, 256, 232]
        # Global training-item ids: the rows of the target table phase 2 trains too.
        np.testing.assert_array_equal(np.sort(np.concatenate([b["index"] for b in batches])), trusted_ids)
        for batch in batches:
            np.testing.assert_array_equal(batch["image"][:, 0], 2 * batch["index"])  # id t is image 2t
    config = config_lib.apply_overrides(store_config(config_lib.DataConfig(), "", ""), {"train.batch_size": 256})
    detector_batches = list(chnr_detector.detector_dataset(trusted, config, 0, 1))
    assert [int(batch["label"].shape[0]) for batch in detector_batches] == [256, 256, 256, 232]
    everyone = TrainingPairs.from_store(store, split, noise)
    assert everyone.steps_per_epoch("one", 256) == 20  # phase 2: 19 x 256 + 136


def test_phase1_refreshes_only_the_trusted_items_targets(tmp_path):
    data, features = make_store(tmp_path / "data")
    config = _chnr_config(data, features, str(tmp_path / "run"))
    prepared = run_kit.prepare(config)
    trusted = chnr.trusted_pairs(prepared.store, prepared.split, prepared.noise)
    model = run_kit.build_model(config, prepared.store.image_dim, prepared.store.text_dim,
                                len(prepared.noise.protected), **chnr.chnr_model_overrides(config))
    run_kit.compile_model(model, config)
    before = np.array(model.binary_targets)
    run_kit.fit_hashing(model, trusted, config, 0, 1, [BinaryTargetUpdater()], verbose=0)
    changed = np.flatnonzero(np.any(np.array(model.binary_targets) != before, axis=1))
    assert len(changed) and set(changed) <= set(trusted.item_ids.tolist())


def test_chnr_needs_two_trusted_pairs(finished_run):
    data = dataclasses.replace(finished_run["data"], noise_rate=0.5, clean_fraction=0.02)  # 1 of 48
    workdir = finished_run["root"] / "one_trusted"
    config = _chnr_config(data, finished_run["features"], str(workdir))
    config = dataclasses.replace(config, data=data)
    with pytest.raises(ValueError, match="trusted clean subset has 1 pair.*at least 2"):
        chnr.train(config, verbose=0)
    assert not workdir.exists()  # refused before the first write
