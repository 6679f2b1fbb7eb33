"""Tests for rs_hashing.encoders.encoder_towers: where each encoder is cut, and that the
trainable top on the frozen bottom is the whole encoder (tiny encoders, and a random
EfficientNet-Lite0 at 32 px)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.encoders.efficientnet_lite0 import NUM_STAGES
from rs_hashing.encoders.encoder_towers import EncoderTowers
from rs_hashing.encoders.frozen_encoders import FrozenEncoders
from tests import testing

CAPTIONS = ["many green trees are near the river .", "two planes", "a large white building beside a road"]


@pytest.fixture(scope="module")
def tiny_encoders():
    return FrozenEncoders(testing.tiny_config().features)


@pytest.fixture(scope="module")
def efficientnet_encoders():
    features = config_lib.FeatureConfig(image_encoder="efficientnet_lite0", image_weights="none", image_size=32,
                                        text_encoder="tiny_bert", sequence_length=8)
    return FrozenEncoders(features)


def _pixels(size: int, count: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype("float32")


@pytest.mark.parametrize("stages, layers, image_cut, text_cut", [
    (1, 1, "conv2", "transformer_layer_1"), (2, 2, "conv1", "transformer_layer_0")])
def test_tiny_tops_on_their_bottoms_are_the_whole_encoders(tiny_encoders, stages, layers, image_cut, text_cut):
    towers = EncoderTowers(tiny_encoders, stages, layers)
    assert towers.cut() == {"image_trainable_stages": stages, "text_trainable_layers": layers,
                            "image_cut": image_cut, "text_cut": text_cut}
    pixels = _pixels(16)
    image_top = towers.image_top()
    np.testing.assert_allclose(image_top(towers.image_bottom(pixels)), tiny_encoders.image(pixels), atol=1e-6)
    states, padding_mask = towers.text_inputs(tf.constant(CAPTIONS))
    assert states.shape[-1] == 16 and padding_mask.shape == states.shape[:2]
    text_top = towers.text_top()
    whole = tiny_encoders.text.encode(CAPTIONS)
    np.testing.assert_allclose(text_top({"states": states, "padding_mask": padding_mask}), whole, atol=1e-5)
    # The cache's form: zero states at padding, int8 masks, full sequence length.
    cached = towers.encode_text_states(CAPTIONS, batch_size=2)
    assert cached["states"].shape == (3, 8, 16) and cached["padding_mask"].dtype == np.int8
    assert not cached["states"][cached["padding_mask"] == 0].any()
    from_cache = text_top({"states": cached["states"], "padding_mask": cached["padding_mask"].astype("int32")})
    np.testing.assert_allclose(from_cache, whole, atol=1e-5)


def test_efficientnet_lite0_is_cut_at_stage_boundaries_with_the_head_convolution_on_top(efficientnet_encoders):
    pixels = _pixels(32, count=2)
    whole = efficientnet_encoders.image(pixels)
    # (stages, first block of the top, activations entering it at 32 px)
    for stages, first_block, shape in ((1, 15, (1, 1, 192)), (2, 11, (2, 2, 112)), (NUM_STAGES, 0, (16, 16, 32))):
        towers = EncoderTowers(efficientnet_encoders, stages, 0)
        bottom, top = towers.image_bottom, towers.image_top()
        assert tuple(bottom.output_shape[1:]) == shape and tuple(top.input_shape[1:]) == shape
        np.testing.assert_allclose(top(bottom(pixels)), whole, atol=1e-5)
        weighted = {layer.name for layer in top.layers if layer.weights}
        expected = {layer.name for layer in efficientnet_encoders.image.layers if layer.weights
                    and (layer.name.startswith("head_") or (layer.name.startswith("block")
                         and int(layer.name[5:].split("_")[0]) >= first_block))}
        assert weighted == expected, stages
        # Nothing of the bottom is in the top, nothing of the top in the bottom.
        assert not weighted & {layer.name for layer in bottom.layers}
    with pytest.raises(ValueError, match="7 MBConv stages; trainable stages=8 must be an integer from 1 to 7"):
        EncoderTowers(efficientnet_encoders, 8, 0).image_bottom  # pylint: disable=expression-not-assigned


def test_the_top_is_a_copy_training_it_leaves_the_encoder_as_it_was(tiny_encoders):
    towers = EncoderTowers(tiny_encoders, 1, 1)
    pixels = _pixels(16)
    before_image, before_text = np.array(tiny_encoders.image(pixels)), tiny_encoders.text.encode(CAPTIONS)
    image_top, text_top = towers.image_top(), towers.text_top()
    for variable in image_top.trainable_variables + text_top.trainable_variables:
        variable.assign(variable * 2.0 + 0.1)
    np.testing.assert_array_equal(tiny_encoders.image(pixels), before_image)
    np.testing.assert_array_equal(tiny_encoders.text.encode(CAPTIONS), before_text)
    assert not np.allclose(image_top(towers.image_bottom(pixels)), before_image)
    # Each call gives a new top with the pretrained weights.
    np.testing.assert_allclose(towers.image_top()(towers.image_bottom(pixels)), before_image, atol=1e-6)


def test_frozen_counts_keep_the_whole_encoders(tiny_encoders):
    towers = EncoderTowers(tiny_encoders, 0, 0)
    assert not towers.trainable and towers.image_top() is None and towers.text_top() is None
    assert towers.image_bottom is tiny_encoders.image
    assert towers.text_bottom is tiny_encoders.text.token_model()
    assert towers.cut() == {"image_trainable_stages": 0, "text_trainable_layers": 0, "image_cut": None,
                            "text_cut": None}


def test_tops_that_cannot_be_cut_are_refused(tiny_encoders):
    with pytest.raises(ValueError, match="image_stages must be a non-negative integer, got -1"):
        EncoderTowers(tiny_encoders, -1, 0)
    resnet = FrozenEncoders(config_lib.FeatureConfig(image_encoder="resnet18", image_weights="none"))
    with pytest.raises(ValueError, match="image_trainable_stages=1: the image encoder 'resnet18' cannot be cut"):
        EncoderTowers(resnet, 1, 0)
    last4 = FrozenEncoders(config_lib.FeatureConfig(text_encoder="tiny_bert", text_pooling="last4_sum_mean"))
    with pytest.raises(ValueError, match="text_pooling='last4_sum_mean': that pooling reads hidden states below"):
        EncoderTowers(last4, 0, 1)
    with pytest.raises(ValueError, match="tiny_cnn has 2 convolutions; trainable stages=3"):
        EncoderTowers(tiny_encoders, 3, 0).image_top()
    with pytest.raises(ValueError, match="has 2 transformer layers; trainable layers=3"):
        EncoderTowers(tiny_encoders, 0, 3).text_top()


def test_tops_serialise_and_rebuild(tiny_encoders):
    towers = EncoderTowers(tiny_encoders, 1, 1)
    states, padding_mask = towers.text_inputs(tf.constant(CAPTIONS))
    inputs = ((towers.image_top(), towers.image_bottom(_pixels(16))),
              (towers.text_top(), {"states": states, "padding_mask": padding_mask}))
    for top, top_inputs in inputs:
        rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(top))
        rebuilt.set_weights(top.get_weights())
        np.testing.assert_array_equal(rebuilt(top_inputs), top(top_inputs))
