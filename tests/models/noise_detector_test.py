"""Tests for rs_hashing.models.noise_detector (tiny dims, seconds)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.models.noise_detector import NoiseDetector

IMAGE, TEXT, HIDDEN = 12, 10, 16


def features(seed=0, count=6):
    rng = np.random.default_rng(seed)
    return (rng.normal(3.0, 5.0, size=(count, IMAGE)).astype("float32"),
            rng.normal(-1.0, 0.1, size=(count, TEXT)).astype("float32"))


def test_architecture_and_output_range():
    detector = NoiseDetector(IMAGE, TEXT, hidden_dim=HIDDEN, dropout=0.2)
    kinds = [type(layer).__name__ for layer in detector.classifier.layers]
    assert kinds == ["InputLayer"] + ["Dense", "ReLU", "Dropout"] * 3 + ["Dense"]
    dense = [layer for layer in detector.classifier.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [HIDDEN, HIDDEN, HIDDEN, 1]
    assert dense[0].kernel.shape == (IMAGE + TEXT, HIDDEN)
    assert all(layer.rate == 0.2 for layer in detector.classifier.layers if isinstance(layer, keras.layers.Dropout))
    # torch.nn.Linear's initialisation, like the hash heads.
    assert np.abs(np.asarray(dense[0].kernel)).max() <= 1 / math.sqrt(IMAGE + TEXT) + 1e-6
    image, text = features()
    scores = np.asarray(detector.score(image, text))
    assert scores.shape == (6,) and np.all((scores > 0) & (scores < 1))
    probabilities = np.asarray(detector(np.concatenate([image, text], axis=1)))
    np.testing.assert_allclose(probabilities[:, 0], scores, rtol=1e-6)
    logits = np.asarray(detector.logits(detector.standardize(detector.pair_features(image, text))))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), scores, rtol=1e-5)


def test_dropout_acts_only_in_training():
    detector = NoiseDetector(IMAGE, TEXT, hidden_dim=HIDDEN, dropout=0.5, seed=0)
    image, text = features()
    np.testing.assert_array_equal(np.asarray(detector.score(image, text)), np.asarray(detector.score(image, text)))
    assert not np.allclose(np.asarray(detector.score(image, text, training=True)),
                           np.asarray(detector.score(image, text)))


def test_adapt_standardises_each_dimension():
    detector = NoiseDetector(IMAGE, TEXT, hidden_dim=HIDDEN)
    image, text = features(count=50)
    pairs = np.concatenate([image, text], axis=1)
    np.testing.assert_array_equal(np.asarray(detector.standardize(pairs)), pairs)  # identity before adapt
    detector.adapt(pairs)
    standardized = np.asarray(detector.standardize(pairs))
    np.testing.assert_allclose(standardized.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(standardized.std(axis=0), 1, atol=1e-4)
    constant = np.ones((4, IMAGE + TEXT), "float32")
    detector.adapt(constant)  # zero variance: finite, not NaN
    assert np.all(np.isfinite(np.asarray(detector.standardize(constant))))
    with pytest.raises(ValueError, match=r"expected a non-empty \[N, 22\] array"):
        detector.adapt(pairs[:, :5])


def test_same_seed_same_weights():
    a, b, c = (NoiseDetector(IMAGE, TEXT, hidden_dim=HIDDEN, seed=s) for s in (1, 1, 2))
    for va, vb, vc in zip(a.trainable_variables, b.trainable_variables, c.trainable_variables):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))
    assert any(not np.array_equal(np.asarray(va), np.asarray(vc))
               for va, vc in zip(a.trainable_variables, c.trainable_variables))


def test_weights_and_statistics_survive_save_load_and_checkpoints(tmp_path):
    detector = NoiseDetector(IMAGE, TEXT, hidden_dim=HIDDEN, seed=0)
    image, text = features(count=20)
    detector.adapt(np.concatenate([image, text], axis=1))
    expected = np.asarray(detector.score(image, text))
    path = str(tmp_path / "detector.weights.h5")
    detector.save_weights(path)
    reloaded = NoiseDetector.from_config(detector.get_config())
    reloaded.load_weights(path)
    np.testing.assert_allclose(np.asarray(reloaded.score(image, text)), expected, rtol=1e-6)
    tf.train.Checkpoint(detector=detector).write(str(tmp_path / "ckpt"))
    restored = NoiseDetector(IMAGE, TEXT, hidden_dim=HIDDEN, seed=5)
    tf.train.Checkpoint(detector=restored).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    # The standardisation reads its variables at call time: restored values take effect.
    np.testing.assert_allclose(np.asarray(restored.score(image, text)), expected, rtol=1e-6)


def test_config_round_trip():
    detector = NoiseDetector(IMAGE, TEXT, hidden_dim=HIDDEN, dropout=0.1, seed=3, name="det")
    config = detector.get_config()
    assert config == {"name": "det", "trainable": True, "image_dim": IMAGE, "text_dim": TEXT, "hidden_dim": HIDDEN,
                      "dropout": 0.1, "seed": 3}
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(detector))
    assert isinstance(revived, NoiseDetector) and revived.get_config() == config


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_dim=0, text_dim=TEXT), "image_dim must be a positive integer, got 0"),
    (dict(image_dim=IMAGE, text_dim=2.0), "text_dim must be a positive integer, got 2.0"),
    (dict(image_dim=IMAGE, text_dim=TEXT, hidden_dim=True), "hidden_dim must be a positive integer, got True"),
    (dict(image_dim=IMAGE, text_dim=TEXT, dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
    (dict(image_dim=IMAGE, text_dim=TEXT, seed="1"), "seed must be an integer or None, got '1'"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseDetector(**kwargs)


def test_mismatched_features_are_an_error():
    detector = NoiseDetector(IMAGE, TEXT, hidden_dim=HIDDEN)
    image, text = features()
    with pytest.raises(ValueError, match=r"expected image \[N, 12\] and text \[N, 10\]"):
        detector.score(text, image)
    with pytest.raises(ValueError, match="6 images but 5 captions"):
        detector.score_arrays(image, text[:5])
