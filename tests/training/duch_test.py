"""Tests for rs_hashing.training.duch: the DUCH driver's run folder, retrieval, resume
and failure modes; with trainable encoder tops (tower mode) on the tiny encoders."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.data import loaders
from rs_hashing.data.image_augmenter import ImageAugmenter
from rs_hashing.encoders.encoder_towers import EncoderTowers
from rs_hashing.errors import RunFolderError, TrainingError
from rs_hashing.features.extraction import extract_features
from rs_hashing.features.image_pipeline import load_image, load_pixels, resize_image
from rs_hashing.hashing_model import HashingModel
from rs_hashing.training import duch, evaluation, run_kit
from rs_hashing.training.training_pairs import TrainingPairs
from tests.training.tiny_store import (Killed, kill_after_checkpoint, make_image_archive, make_store, store_config,
                                       tower_config)


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


# ----------------------------------------------------------------------- trainable encoder tops


@pytest.fixture(scope="module")
def tower_store(tmp_path_factory):
    """A float32 activation store of the tiny encoders cut before tiny_cnn's last
    convolution and tiny_bert's last layer, on 32 real images (float32: the comparisons
    with raw inputs below are then exact up to float rounding)."""
    root = tmp_path_factory.mktemp("towers")
    config = tower_config(make_image_archive(root), root, activation_dtype="float32", epochs=2)
    extract_features(config, loaders.load_dataset(config.data), config.features.features, progress=False)
    return config


def _raw_batch(config, data, pairs, items, towers):
    """The pairs (item positions `items`, their chosen captions) of a cached batch, from
    raw inputs: image files and caption strings through the whole encoders, the frozen
    bottom computed in the step as an uncached run would."""
    dataset, store = data.dataset, data.store
    images = data.split.train[pairs.item_ids[items]]
    augmenter, size = ImageAugmenter(seed=config.features.augment_seed), config.features.image_size
    pixels = tf.stack([load_image(tf.constant(dataset.image_path(i)), size) for i in images])
    augmented = tf.stack([resize_image(tf.constant(augmenter.augment(
        load_pixels(tf.constant(dataset.image_path(i))).numpy(), int(i))), size) for i in images])
    rows = store.caption_offsets[images] + pairs.chosen[items] - pairs.pool_offsets[items]
    with open(os.path.join(store.path, "captions.json"), encoding="utf-8") as f:
        captions = json.load(f)
    batch = {"image": towers.image_bottom(pixels), "image_aug": towers.image_bottom(augmented),
             "index": pairs.item_ids[items].astype(np.int32), "pair_weights": pairs.pair_weights[pairs.chosen[items]]}
    for view in ("text", "text_aug"):
        batch[view], batch[f"{view}_mask"] = towers.text_inputs(tf.constant([captions[view][r] for r in rows]))
    return batch


def _tower_model(config, store, num_train):
    image_tower, text_tower = run_kit.encoder_tops(config, store)
    model = run_kit.build_model(config, store.image_dim, store.text_dim, num_train, image_tower=image_tower,
                                text_tower=text_tower)
    run_kit.compile_model(model, config)
    return model


def test_a_cached_and_an_uncached_run_give_the_same_loss(tower_store):
    config = tower_store
    data = run_kit.prepare(config)
    pairs = TrainingPairs.from_store(data.store, data.split)
    towers = EncoderTowers.of_config(config)
    cached_model, raw_model = _tower_model(config, data.store, len(pairs)), _tower_model(config, data.store, len(pairs))
    for step, items in enumerate((np.arange(0, 8), np.arange(8, 16))):
        cached = pairs.batch(items, pairs.chosen[items])
        raw = _raw_batch(config, data, pairs, items, towers)
        # The cache holds what the bottom computes from the raw inputs.
        np.testing.assert_allclose(cached["image_aug"], raw["image_aug"], atol=1e-5)
        cached_loss = float(cached_model.train_step(cached)["loss"])
        raw_loss = float(raw_model.train_step(raw)["loss"])
        # At the second step (the trackers average both) heads and tops have been updated once.
        assert cached_loss == pytest.approx(raw_loss, rel=1e-5), step


def test_a_tower_run_gives_the_codes_of_its_raw_inputs_and_resumes(tower_store, tmp_path, monkeypatch):
    config = tower_store
    results = duch.train(config, verbose=0)
    assert np.all(np.isfinite(run_kit.read_history(os.path.join(config.train.run_dir, "history.csv"))["loss"]))
    assert set(results["map@20"]) == {"i2t", "t2i", "i2i", "t2t"}
    codes = np.load(os.path.join(config.train.run_dir, "codes.npz"))
    model = HashingModel.from_run(config.train.run_dir)
    # The tuned tops are the run's, not the pretrained ones.
    pretrained = EncoderTowers.of_config(config).image_top()
    assert not np.allclose(model.heads.image_tower.get_weights()[0], pretrained.get_weights()[0])
    data = run_kit.prepare(config)
    dataset, split = data.dataset, data.split
    for part, images in (("query", split.query), ("database", split.database)):
        image_codes = model.encode_images([dataset.image_path(i) for i in images]).codes
        np.testing.assert_array_equal(image_codes, codes[f"{part}_image"])
        texts, _ = dataset.flat_captions()
        chosen = split.chosen_caption_index(dataset.caption_offsets(), images)
        np.testing.assert_array_equal(model.encode_texts([texts[i] for i in chosen]).codes, codes[f"{part}_text"])

    # A run killed after its first epoch resumes (tops and their optimizer included) to
    # the same codes.
    resumed = dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=str(tmp_path / "resumed")))
    kill_after_checkpoint(monkeypatch, 1)
    with pytest.raises(Killed):
        duch.train(resumed, verbose=0)
    assert duch.train(resumed, verbose=0)["resumed_from_epoch"] == 1
    resumed_codes = np.load(os.path.join(resumed.train.run_dir, "codes.npz"))
    for key in evaluation.CODE_KEYS:
        np.testing.assert_array_equal(resumed_codes[key], codes[key])


def test_a_tower_run_starts_from_a_frozen_runs_heads(tower_store, tmp_path):
    """init_from: heads, discriminator and targets of a finished frozen-feature run start
    a tower run; with the tops still at their pretrained weights it encodes as that run
    (the tops compute the frozen features), and ill-fitting sources are refused."""
    frozen = tower_config(tower_store.data, tmp_path / "frozen", stages=0, layers=0, epochs=3)
    extract_features(frozen, loaders.load_dataset(frozen.data), frozen.features.features, progress=False)
    duch.train(frozen, verbose=0)
    source = HashingModel.from_run(frozen.train.run_dir).heads

    config = config_lib.apply_overrides(tower_store, {"init_from": frozen.train.run_dir,
                                                      "run_dir": str(tmp_path / "warm")})
    data = run_kit.prepare(config)
    pairs = TrainingPairs.from_store(data.store, data.split)
    model = _tower_model(config, data.store, len(pairs))
    model.build_for_features(4)
    assert run_kit.warm_start(model, config, data) == frozen.train.run_dir
    for name in ("image_head", "text_head", "discriminator"):
        for got, want in zip(getattr(model, name).get_weights(), getattr(source, name).get_weights()):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(model.binary_targets), np.asarray(source.binary_targets))
    # Same inputs, same codes: the pretrained tops on the cached activations give the
    # frozen features (float32 cache), the heads are the frozen run's.
    batch = next(iter(pairs.dataset("one", len(pairs), 0, 0, 1)))
    frozen_data = run_kit.prepare(frozen)
    frozen_batch = next(iter(TrainingPairs.from_store(frozen_data.store, frozen_data.split).dataset(
        "one", len(pairs), 0, 0, 1)))
    for view in ("image", "text"):
        warm = np.sign(np.asarray(model.encode_views(batch)[f"{view}_codes"]))
        cold = np.sign(np.asarray(source.encode_views(frozen_batch)[f"{view}_codes"]))
        assert np.mean(warm == cold) > 0.99, view

    results = duch.train(dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1)), verbose=0)
    assert results["init_from"] == frozen.train.run_dir

    other_bits = config_lib.apply_overrides(config, {"bits": 16})
    model16 = _tower_model(other_bits, data.store, len(pairs))
    with pytest.raises(RunFolderError, match="bits 8 there, 16 here"):
        run_kit.warm_start(model16, other_bits, data)
    other_split = config_lib.apply_overrides(config, {"split_seed": 7})
    other_data = run_kit.prepare(other_split)
    with pytest.raises(RunFolderError, match="another training split"):
        run_kit.warm_start(_tower_model(other_split, other_data.store, len(pairs)), other_split, other_data)
    with pytest.raises(RunFolderError, match="not a finished run folder"):
        run_kit.warm_start(model, config_lib.apply_overrides(config, {"init_from": str(tmp_path)}), data)
