"""Tests for rs_hashing.hashing_model: the one path from a run folder to codes
(tiny encoders, seconds)."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from rs_hashing import config as config_lib
from rs_hashing import hashing_model
from rs_hashing.encoders.frozen_encoders import FrozenEncoders
from rs_hashing.errors import DatasetError, EncoderMismatchError, RunFolderError
from rs_hashing.features.image_pipeline import load_image
from rs_hashing.hashing_model import HashingModel
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from tests import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run.make_tiny_run(str(tmp_path_factory.mktemp("tiny")), saved_encoders=True)


@pytest.fixture(scope="module")
def model(run_dir):
    return HashingModel.from_run(run_dir)


def _signs(values):
    return np.where(np.asarray(values) >= 0, 1, -1)


def test_from_run_rebuilds_the_trained_heads(run_dir, model):
    assert (model.bits, model.image_size) == (tiny_run.BITS, tiny_run.IMAGE_SIZE)
    with open(os.path.join(run_dir, "model_config.json"), encoding="utf-8") as f:
        heads = CrossModalHashingModel.from_config(json.load(f))
    heads.load_weights(os.path.join(run_dir, "model.weights.h5"))
    features = np.random.default_rng(0).normal(size=(3, tiny_run.FEATURE_DIM)).astype("float32")
    np.testing.assert_array_equal(np.asarray(model.heads.encode_image(features)),
                                  np.asarray(heads.encode_image(features)))


def test_image_files_use_the_training_preprocessing(tmp_path, model):
    paths = tiny_run.write_images(str(tmp_path), count=3)
    codes = model.encode_images(paths, batch_size=2)
    # By hand: the shared load_image, the run's image encoder, the image hash head, sign.
    pixels = np.stack([load_image(tf.constant(p), tiny_run.IMAGE_SIZE).numpy() for p in paths])
    expected = np.asarray(model.heads.encode_image(model.image_encoder(pixels, training=False)))
    np.testing.assert_array_equal(codes.codes, _signs(expected))
    assert codes.codes.dtype == np.int8 and codes.codes.shape == (3, tiny_run.BITS)
    np.testing.assert_array_equal(codes.packed, np.packbits(codes.codes > 0, axis=1))
    from_bytes = model.image_hash_from_bytes([open(p, "rb").read() for p in paths], batch_size=2)
    np.testing.assert_allclose(from_bytes, expected, atol=1e-6)
    np.testing.assert_array_equal(model.encode_images(paths[::-1], batch_size=1).codes, codes.codes[::-1])


def test_arrays_and_pil_images_give_the_codes_of_their_files(tmp_path, model):
    paths = tiny_run.write_images(str(tmp_path), count=4)
    png_paths = [p for p in paths if p.endswith(".png")]  # Lossless: the same pixels.
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in png_paths]
    from_files = model.encode_images(png_paths).codes
    np.testing.assert_array_equal(model.encode_images(arrays).codes, from_files)
    np.testing.assert_array_equal(model.encode_images([Image.open(p) for p in png_paths]).codes, from_files)
    with pytest.raises(ValueError, match="image 0: expected .* uint8/uint16 pixels"):
        model.encode_images([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="not one path"):
        model.encode_images(png_paths[0])
    assert len(model.encode_images([])) == 0


def test_text_codes_are_the_text_head_on_the_text_encoder(model):
    texts = list(tiny_run.CAPTIONS)
    codes = model.encode_texts(texts)
    features = model.text_encoder.encode(texts)
    expected = np.asarray(model.heads.encode_text(features))
    np.testing.assert_allclose(model.text_hash(texts), expected, atol=1e-6)
    np.testing.assert_array_equal(codes.codes, _signs(expected))
    with pytest.raises(ValueError, match="text 1 is empty"):
        model.encode_texts(["fine", "  "])
    with pytest.raises(ValueError, match="not one string"):
        model.encode_texts("a beach")
    assert model.text_hash([]).shape == (0, tiny_run.BITS)


def test_unreadable_images_are_named(tmp_path, model):
    paths = tiny_run.write_images(str(tmp_path), count=2)
    with pytest.raises(DatasetError, match="1 image file.*not found: .*nowhere.png"):
        model.encode_images(paths[:1] + [str(tmp_path / "nowhere.png")])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match="broken.png"):
        model.encode_images(paths + [str(broken)])


def test_fingerprint_follows_the_weights(tmp_path):
    first = HashingModel.from_run(tiny_run.make_tiny_run(str(tmp_path / "a"), seed=0))
    second = HashingModel.from_run(tiny_run.make_tiny_run(str(tmp_path / "b"), seed=1))
    assert first.fingerprint() != second.fingerprint()
    assert len(first.fingerprint()) == 16
    assert first.metadata()["weights"] == first.fingerprint()
    assert first.metadata()["bits"] == tiny_run.BITS


def test_missing_run_files_are_named(tmp_path):
    config_lib.save_config(config_lib.get_preset("smoke"), str(tmp_path))
    with pytest.raises(RunFolderError, match="model_config.json, model.weights.h5 missing"):
        HashingModel.from_run(str(tmp_path))
    with pytest.raises(RunFolderError, match="does not exist"):
        HashingModel.from_run(str(tmp_path / "nowhere"))


def test_truncated_weights_are_named(tmp_path, run_dir):
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    weights = os.path.join(copy, "model.weights.h5")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(RunFolderError, match="model.weights.h5: cannot be loaded"):
        HashingModel.from_run(copy)


def test_other_installed_encoder_weights_are_refused(tmp_path, run_dir):
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    recorded = FrozenEncoders(config_lib.load_config(copy).features).identity()
    with open(os.path.join(copy, hashing_model.ENCODERS_FILE), "w", encoding="utf-8") as f:
        json.dump(recorded, f)
    HashingModel.from_run(copy)  # The same weights: accepted.
    image_weights = config_lib.load_config(copy).features.image_weights
    with open(image_weights, "ab") as f:  # The encoder weights file changes after training.
        f.write(b"\0")
    with pytest.raises(EncoderMismatchError, match=recorded["image"]["fingerprint"]):
        HashingModel.from_run(copy)


@pytest.mark.parametrize("override, message", [
    ({"image_weights": "none"}, "image_weights='none' is randomly initialised"),
    ({"image_weights": "default"}, "image_encoder='tiny_cnn' with image_weights='default'"),
    ({"text_encoder": "tiny_bert"}, "text_encoder='tiny_bert'"),
])
def test_random_unsaved_encoders_cannot_be_exported(tmp_path, run_dir, override, message):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    for name in hashing_model.RUN_FILES[1:]:
        shutil.copy(os.path.join(run_dir, name), workdir)
    config = config_lib.apply_overrides(config_lib.load_config(run_dir), override)
    config_lib.save_config(config, workdir)
    with pytest.raises(ValueError, match=message):
        HashingModel.from_run(workdir).check_exportable()


def test_feature_width_mismatch_is_a_clear_error(run_dir, model):
    wrong = CrossModalHashingModel(32, tiny_run.FEATURE_DIM, tiny_run.BITS, 16, num_train=4, seed=0)
    other = HashingModel(run_dir, model.config, wrong, model.encoders)
    with pytest.raises(ValueError, match="16-d features but the image head of .* was trained on 32-d"):
        other.encode_images([np.zeros((8, 8, 3), np.uint8)])


# ----------------------------------------------------------------------- fine-tuned encoder tops


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    return tiny_run.make_tiny_run(str(tmp_path_factory.mktemp("tuned")), saved_encoders=True, towers=(1, 1))


def test_a_tuned_run_encodes_through_the_frozen_bottom_the_tuned_top_and_the_head(tmp_path, tuned_run):
    model = HashingModel.from_run(tuned_run)
    towers = model.towers
    assert model.heads.image_tower is not None and model.heads.text_tower is not None
    paths = tiny_run.write_images(str(tmp_path), count=3)
    pixels = np.stack([load_image(tf.constant(p), tiny_run.IMAGE_SIZE).numpy() for p in paths])
    # By hand: the bottom (the encoder up to tiny_cnn's last convolution), the run's tuned
    # copy of that convolution, the head.
    activations = towers.image_bottom(pixels)
    expected = np.asarray(model.heads.image_head(model.heads.image_tower(activations)))
    np.testing.assert_allclose(model.image_hash_from_files(paths), expected, atol=1e-6)
    # ... which is not what the pretrained top gives.
    pretrained = np.asarray(model.heads.image_head(towers.image_top()(activations)))
    assert np.abs(pretrained - expected).max() > 1e-2
    captions = list(tiny_run.CAPTIONS)
    states = towers.encode_text_states(captions)
    tuned_top = {"states": states["states"], "padding_mask": states["padding_mask"].astype("int32")}
    expected_text = np.asarray(model.heads.text_head(model.heads.text_tower(tuned_top)))
    np.testing.assert_allclose(model.text_hash(captions), expected_text, atol=1e-5)
    np.testing.assert_array_equal(model.encode_texts(captions).codes, _signs(expected_text))
    tokens = model.text_encoder.tokenize(captions)
    np.testing.assert_allclose(model.token_hash_graph(tokens["token_ids"], tokens["padding_mask"]), expected_text,
                               atol=1e-5)


def test_a_config_that_cuts_other_encoders_than_the_trained_model_is_refused(tmp_path, tuned_run):
    workdir = str(tmp_path / "copy")
    shutil.copytree(tuned_run, workdir)
    config = config_lib.apply_overrides(config_lib.load_config(workdir), {"text_trainable_layers": 0})
    config_lib.save_config(config, workdir)
    with pytest.raises(ValueError, match="the text encoder is frozen in config.json, but the trained model has a "
                                         "text tower"):
        HashingModel.from_run(workdir)
