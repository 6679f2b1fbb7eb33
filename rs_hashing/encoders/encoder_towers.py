"""Tower mode: each encoder cut into a frozen bottom and a top that trains with the heads.

`model.image_trainable_stages = N > 0` cuts the image encoder before its last N stages:
EfficientNet-Lite0's last N MBConv stages (of 7) with the 1x1 head convolution and the
pooling, tiny_cnn's last N convolutions (of 2) with the pooling.
`model.text_trainable_layers = L > 0` cuts the text encoder (keras-hub BERT) before its
last L transformer layers, which train with the pooling (masked mean or [CLS]).

The bottom runs once, at extraction: the feature store caches its activations (the
tensor entering the first trainable layer; for captions, the token states and their
padding mask) for the original and the augmented views. The top is a new Keras model
whose layers are copies of the pretrained ones, weights included; the hashing model
owns and trains it (`CrossModalHashingModel(image_tower=..., text_tower=...)`), so the
frozen encoders' own layers never change, and top(bottom(x)) is the whole encoder until
training moves the top.

With a count of 0 the bottom is the whole frozen encoder and there is no top: the
frozen mode of the papers, whose feature stores are exactly those of earlier versions.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.encoders.frozen_encoders import FrozenEncoders
from rs_hashing.encoders.text_encoder import TOWER_POOLINGS

# Image encoders that can be cut into a frozen bottom and a trainable top.
IMAGE_TOWER_ENCODERS = ("efficientnet_lite0", "tiny_cnn")


def functional_bottom(model: keras.Model, first_top_layer: str) -> keras.Model:
    """The part of a functional model below the input of `first_top_layer`; it shares
    the model's layers and weights."""
    return keras.Model(model.input, model.get_layer(first_top_layer).input, name=f"{model.name}_bottom")


def functional_top(model: keras.Model, first_top_layer: str, name: str) -> keras.Model:
    """The part of a functional model from the input of `first_top_layer` on, as a new
    model (input `activations`) of new copies of those layers with their weights:
    training it leaves `model` as it is. A cut that a connection jumps over (a residual
    around it) is refused by Keras as a disconnected graph."""
    cut = model.get_layer(first_top_layer).input
    shared_top = keras.Model(cut, model.output)
    activations = keras.Input(shape=tuple(cut.shape[1:]), name="activations")
    copy = keras.models.clone_model(shared_top, input_tensors=activations)
    copy.set_weights(shared_top.get_weights())
    return keras.Model(copy.input, copy.output, name=name)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"EncoderTowers: {name} must be a non-negative integer, got {value!r}.")
    return int(value)


class EncoderTowers:
    """The frozen bottoms and the trainable tops of one configuration's encoders.

    Args:
        encoders: the frozen encoders of the configuration's feature settings.
        image_stages: `model.image_trainable_stages` (0: the image encoder stays whole
            and frozen).
        text_layers: `model.text_trainable_layers` (0: the text encoder stays whole and
            frozen).

    Raises:
        ValueError: a negative or non-integer count, an image encoder that cannot be cut
            (only `IMAGE_TOWER_ENCODERS`), or a text pooling that reads hidden states
            below the cut (`last4_sum_mean`). A count above the encoder's stages or
            layers is refused when the encoder is first cut.
    """

    def __init__(self, encoders: FrozenEncoders, image_stages: int = 0, text_layers: int = 0):
        self.encoders = encoders
        self.image_stages = _check_count("image_stages", image_stages)
        self.text_layers = _check_count("text_layers", text_layers)
        features = encoders.features
        if self.image_stages and features.image_encoder not in IMAGE_TOWER_ENCODERS:
            raise ValueError(
                f"image_trainable_stages={self.image_stages}: the image encoder '{features.image_encoder}' cannot "
                f"be cut into a trainable top; tower mode supports {', '.join(IMAGE_TOWER_ENCODERS)} (or set "
                "image_trainable_stages=0)")
        if self.text_layers and features.text_pooling not in TOWER_POOLINGS:
            raise ValueError(
                f"text_trainable_layers={self.text_layers} with text_pooling='{features.text_pooling}': that "
                f"pooling reads hidden states below the trainable layers; use one of {', '.join(TOWER_POOLINGS)} "
                "(or set text_trainable_layers=0)")
        self._image_bottom = None

    @classmethod
    def of_config(cls, config: config_lib.Config, encoders: FrozenEncoders | None = None) -> "EncoderTowers":
        """The towers `config.model` asks for, on `encoders` (built from
        `config.features` on first use when None)."""
        return cls(encoders or FrozenEncoders(config.features), config.model.image_trainable_stages,
                   config.model.text_trainable_layers)

    @property
    def trainable(self) -> bool:
        """Whether any encoder has a trainable top."""
        return bool(self.image_stages or self.text_layers)

    def cut(self) -> dict[str, Any]:
        """Where the encoders are cut (what a feature store's manifest records): the
        counts and the name of each top's first layer (None for a frozen encoder)."""
        return {
            "image_trainable_stages": self.image_stages,
            "text_trainable_layers": self.text_layers,
            "image_cut": self.encoders.image.first_top_layer(self.image_stages) if self.image_stages else None,
            "text_cut": self.encoders.text.first_top_layer(self.text_layers) if self.text_layers else None,
        }

    # ------------------------------------------------------------------ image

    @property
    def image_bottom(self) -> keras.Model:
        """Float pixels [N, S, S, 3] in [0, 255] -> the image side's cached input: the
        activations at the cut, or the features of the whole frozen encoder."""
        if not self.image_stages:
            return self.encoders.image
        if self._image_bottom is None:
            encoder = self.encoders.image
            self._image_bottom = functional_bottom(encoder, encoder.first_top_layer(self.image_stages))
        return self._image_bottom

    def image_top(self) -> keras.Model | None:
        """A new trainable image top (activations -> features [N, D]) with the
        pretrained weights, or None in frozen mode."""
        if not self.image_stages:
            return None
        encoder = self.encoders.image
        return functional_top(encoder, encoder.first_top_layer(self.image_stages), "image_tower")

    # ------------------------------------------------------------------ text

    @property
    def text_bottom(self) -> keras.Model:
        """{"token_ids", "padding_mask"} int32 [N, T] -> the text side's cached input:
        the token states at the cut [N, T, H], or the whole frozen encoder's features."""
        if not self.text_layers:
            return self.encoders.text.token_model()
        return self.encoders.text.states_model(self.text_layers)

    def text_top(self) -> keras.Model | None:
        """A new trainable text top ({"states", "padding_mask"} -> features [N, H]) with
        the pretrained weights, or None in frozen mode."""
        if not self.text_layers:
            return None
        return self.encoders.text.top_model(self.text_layers)

    def text_inputs(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Graph-friendly: a [N] string batch -> (the bottom's output, the padding mask
        int32 [N, T]), tokenised in graph and run up to the batch's longest caption
        (padding is masked, so the trimmed columns change nothing)."""
        tokens = self.encoders.text.tokenize(texts)
        longest = tf.maximum(tf.reduce_max(tf.reduce_sum(tokens["padding_mask"], axis=1)), 1)
        tokens = {name: value[:, :longest] for name, value in tokens.items()}
        return self.text_bottom(tokens, training=False), tokens["padding_mask"]

    def encode_text_states(self, texts: Sequence[str], batch_size: int = 128) -> dict[str, np.ndarray]:
        """The text bottom's token states of captions for a feature store's cache:
        {"states": float32 [M, T, H], "padding_mask": int8 [M, T]} at T =
        sequence_length (see `TextEncoder.encode_states`)."""
        if not self.text_layers:
            raise ValueError("EncoderTowers.encode_text_states: the text encoder is frozen (text_layers=0); "
                             "its features come from TextEncoder.encode")
        return self.encoders.text.encode_states(texts, self.text_layers, batch_size)
