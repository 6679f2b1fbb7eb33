"""Tests for rs_hashing.models.code_discriminator."""

import numpy as np
import pytest

from rs_hashing.models.code_discriminator import CodeDiscriminator


def test_architecture_and_logits_shape():
    discriminator = CodeDiscriminator(bits=8)
    layer_types = [type(layer).__name__ for layer in discriminator.layers]
    assert layer_types == ["InputLayer", "Dense", "BatchNormalization", "ReLU", "Dense"]
    assert discriminator.get_layer("hidden_dense").units == 16
    codes = np.random.default_rng(0).uniform(-1, 1, size=(4, 8)).astype("float32")
    logits = np.asarray(discriminator(codes, training=True))
    assert logits.shape == (4, 1)
    # Logits, not probabilities: no squashing into (0, 1) is applied.
    assert discriminator.layers[-1].activation.__name__ == "linear"


def test_config_round_trip():
    discriminator = CodeDiscriminator(bits=8, name="discriminator")
    config = discriminator.get_config()
    assert config == {"name": "discriminator", "trainable": True, "bits": 8, "seed": None}
    assert CodeDiscriminator.from_config(config).get_config() == config


def test_bad_bits_is_named():
    with pytest.raises(ValueError, match="bits must be a positive integer, got 0"):
        CodeDiscriminator(bits=0)
