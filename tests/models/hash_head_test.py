"""Tests for rs_hashing.models.hash_head."""

import math

import keras
import numpy as np
import pytest

from rs_hashing.models.hash_head import HashHead


def test_architecture_and_output_range():
    head = HashHead(input_dim=12, bits=8, hidden_dim=16)
    layer_types = [type(layer).__name__ for layer in head.layers]
    assert layer_types == ["InputLayer", "Dense", "BatchNormalization", "ReLU", "Dense", "Activation"]
    assert head.get_layer("hidden_dense").units == 16
    assert head.get_layer("code_dense").units == 8
    features = np.random.default_rng(0).normal(size=(4, 12)).astype("float32") * 50
    for training in (False, True):
        codes = np.asarray(head(features, training=training))
        assert codes.shape == (4, 8)
        assert np.all(np.abs(codes) <= 1.0)


def test_torch_default_initialisation_bounds():
    head = HashHead(input_dim=12, bits=8, hidden_dim=16)
    for name, fan_in in (("hidden_dense", 12), ("code_dense", 16)):
        layer = head.get_layer(name)
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(np.asarray(layer.kernel)).max() <= bound + 1e-6
        assert np.abs(np.asarray(layer.bias)).max() <= bound + 1e-6
        assert np.abs(np.asarray(layer.bias)).max() > 0  # not zero-initialised


def test_config_round_trip():
    head = HashHead(input_dim=12, bits=8, hidden_dim=16, name="image_head")
    config = head.get_config()
    assert config == {
        "name": "image_head", "trainable": True, "input_dim": 12, "bits": 8, "hidden_dim": 16, "seed": None
    }
    rebuilt = HashHead.from_config(config)
    assert isinstance(rebuilt, HashHead)
    assert rebuilt.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert isinstance(revived, HashHead) and revived.get_config() == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_dim": 0, "bits": 8}, "input_dim must be a positive integer, got 0"),
        ({"input_dim": 12, "bits": -8}, "bits must be a positive integer, got -8"),
        ({"input_dim": 12, "bits": 8.0}, "bits must be a positive integer, got 8.0"),
        ({"input_dim": 12, "bits": 8, "hidden_dim": True}, "hidden_dim must be a positive integer, got True"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HashHead(**kwargs)


def test_seed_fixes_the_initial_weights():
    a = HashHead(input_dim=12, bits=8, hidden_dim=16, seed=5)
    b = HashHead(input_dim=12, bits=8, hidden_dim=16, seed=5)
    c = HashHead(input_dim=12, bits=8, hidden_dim=16, seed=6)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a.weights[0]), np.asarray(c.weights[0]))
