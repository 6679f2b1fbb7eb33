"""Tests for rs_hashing.export.hashing_encoders (tiny encoders, seconds)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.export import hashing_encoders
from rs_hashing.export.hashing_encoders import HashingEncoders, binary_codes
from rs_hashing.features.image_pipeline import load_image
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from tests import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run.make_tiny_run(str(tmp_path_factory.mktemp("tiny")), saved_encoders=True)


@pytest.fixture(scope="module")
def encoders(run_dir):
    return HashingEncoders.from_workdir(run_dir)


def test_binary_codes_maps_zero_to_plus_one():
    np.testing.assert_array_equal(binary_codes([[0.5, -0.2, 0.0, -0.0]]), [[1, -1, 1, 1]])
    assert binary_codes([[0.1]]).dtype == np.int8


def test_from_workdir_rebuilds_the_trained_heads(run_dir, encoders):
    assert (encoders.bits, encoders.image_size) == (tiny_run.BITS, tiny_run.IMAGE_SIZE)
    with open(os.path.join(run_dir, "model_config.json"), encoding="utf-8") as f:
        model = CrossModalHashingModel.from_config(json.load(f))
    model.load_weights(os.path.join(run_dir, "model.weights.h5"))
    features = np.random.default_rng(0).normal(size=(3, tiny_run.FEATURE_DIM)).astype("float32")
    np.testing.assert_array_equal(np.asarray(encoders.model.encode_image(features)),
                                  np.asarray(model.encode_image(features)))


def test_image_path_from_bytes_is_the_training_pipeline(tmp_path, encoders):
    paths = tiny_run.write_images(str(tmp_path), count=3)
    from_bytes = encoders.image_hash_from_bytes([open(p, "rb").read() for p in paths], batch_size=2)
    pixels = np.stack([load_image(tf.constant(p), tiny_run.IMAGE_SIZE).numpy() for p in paths])
    features = encoders.image_encoder(pixels, training=False)
    expected = np.asarray(encoders.model.encode_image(features, training=False))
    np.testing.assert_allclose(from_bytes, expected, atol=1e-6)
    assert from_bytes.shape == (3, tiny_run.BITS)


def test_text_path_and_empty_inputs(encoders):
    codes = encoders.text_hash(list(tiny_run.CAPTIONS))
    features = encoders.text_encoder.encode(list(tiny_run.CAPTIONS))
    np.testing.assert_allclose(codes, np.asarray(encoders.model.encode_text(features)), atol=1e-6)
    assert encoders.text_hash([]).shape == (0, tiny_run.BITS)
    assert encoders.image_hash_from_bytes([]).shape == (0, tiny_run.BITS)


def test_missing_run_files_are_named(tmp_path):
    config_lib.save_config(config_lib.get_preset("smoke"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model_config.json, model.weights.h5 missing"):
        HashingEncoders.from_workdir(str(tmp_path))


@pytest.mark.parametrize("override, message", [
    ({"image_weights": "none"}, "image_weights='none' is randomly initialised"),
    ({"image_weights": "default"}, "image_encoder='tiny_cnn' with image_weights='default'"),
    ({"text_encoder": "tiny_bert"}, "text_encoder='tiny_bert'"),
])
def test_random_unsaved_encoders_are_refused(tmp_path, run_dir, override, message):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    for name in hashing_encoders.RUN_FILES[1:]:
        with open(os.path.join(run_dir, name), "rb") as src, open(os.path.join(workdir, name), "wb") as dst:
            dst.write(src.read())
    config = config_lib.apply_overrides(config_lib.load_config(run_dir), override)
    config_lib.save_config(config, workdir)
    with pytest.raises(ValueError, match=message):
        HashingEncoders.from_workdir(workdir)


def test_feature_width_mismatch_is_a_clear_error(encoders):
    wrong = CrossModalHashingModel(32, tiny_run.FEATURE_DIM, tiny_run.BITS, 16, num_train=4, seed=0)
    with pytest.raises(ValueError, match="16-d features but the image head was trained on 32-d"):
        HashingEncoders(encoders.features, wrong, encoders.image_encoder, encoders.text_encoder)
