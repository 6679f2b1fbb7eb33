import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.errors import DatasetError
from rs_hashing.features.image_pipeline import load_image
from rs_hashing.index.archive_encoder import ArchiveEncoder, model_fingerprint
from tests import tiny_run


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    tiny_run.make_tiny_run(str(root / "run"))
    names = tiny_run.write_tile_folder(str(root / "images"), 6)
    keras.utils.set_random_seed(0)
    encoder = ArchiveEncoder(str(root / "run"))
    return encoder, [str(root / "images" / n) for n in names], root


def test_image_codes_use_the_training_preprocessing(archive):
    encoder, paths, _ = archive
    codes = encoder.encode_image_files(paths, batch_size=4)
    assert codes.shape == (6, 8) and codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 1}
    # By hand: the shared load_image, the run's image encoder, the image hash head, sign.
    pixels = tf.stack([load_image(p, encoder.image_size) for p in paths])
    continuous = encoder.model.encode_image(encoder.image_encoder(pixels, training=False))
    np.testing.assert_array_equal(codes, np.where(np.asarray(continuous) >= 0, 1, -1))
    np.testing.assert_array_equal(encoder.encode_image_files(paths[::-1], batch_size=1), codes[::-1])
    assert encoder.encode_image_files([]).shape == (0, 8)


def test_text_codes_are_the_text_head_on_the_text_encoder(archive):
    encoder, _, _ = archive
    texts = ["a sandy beach", "dense green forest", "harbor with boats"]
    codes = encoder.encode_texts(texts)
    continuous = encoder.model.encode_text(encoder.text_encoder.encode(texts))
    np.testing.assert_array_equal(codes, np.where(np.asarray(continuous) >= 0, 1, -1))
    with pytest.raises(ValueError, match="text 1 is empty"):
        encoder.encode_texts(["fine", "  "])
    with pytest.raises(ValueError, match="not one string"):
        encoder.encode_texts("a beach")


def test_unreadable_images_are_named(archive):
    encoder, paths, root = archive
    with pytest.raises(DatasetError, match="1 image file.*not found: .*nowhere.png"):
        encoder.encode_image_files(paths[:1] + [str(root / "nowhere.png")])
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match="broken.png"):
        encoder.encode_image_files(paths[:2] + [str(broken)])


def test_fingerprint_follows_the_weights(tmp_path):
    first = tiny_run.make_tiny_run(str(tmp_path / "a"), seed=0)
    second = tiny_run.make_tiny_run(str(tmp_path / "b"), seed=1)
    assert model_fingerprint(first) != model_fingerprint(second)
    assert len(model_fingerprint(first)) == 16
    os.remove(os.path.join(second, "model.weights.h5"))
    with pytest.raises(FileNotFoundError, match="no trained weights"):
        model_fingerprint(second)
