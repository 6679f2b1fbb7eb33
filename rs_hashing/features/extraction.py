"""Builds the encoders and augmenters a `FeatureConfig` names and extracts a store."""

from __future__ import annotations

import keras

from rs_hashing import config as config_lib
from rs_hashing.data.caption_augmenter import CaptionAugmenter
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.data.image_augmenter import ImageAugmenter
from rs_hashing.features.feature_extractor import FeatureExtractor
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.models.image_encoder import build_image_encoder
from rs_hashing.models.text_encoder import TextEncoder

DEFAULT_TEXT_ENCODER = "all_minilm_l6_v2"
TINY_TEXT_ENCODER = "tiny_bert"


def build_text_encoder(features: config_lib.FeatureConfig) -> TextEncoder:
    """`all_minilm_l6_v2` (the offline default), `tiny_bert` (tests), or a keras-hub
    preset name or local preset folder."""
    if features.text_encoder == TINY_TEXT_ENCODER:
        return TextEncoder.tiny(sequence_length=features.sequence_length, pooling=features.text_pooling)
    preset = None if features.text_encoder == DEFAULT_TEXT_ENCODER else features.text_encoder
    return TextEncoder(preset=preset, sequence_length=features.sequence_length, pooling=features.text_pooling)


def build_image_encoder_from_config(features: config_lib.FeatureConfig) -> keras.Model:
    weights = None if features.image_weights.lower() == "none" else features.image_weights
    return build_image_encoder(features.image_encoder, weights=weights, image_size=features.image_size)


def encoder_info(features: config_lib.FeatureConfig, image_augmenter: ImageAugmenter,
                 caption_augmenter: CaptionAugmenter) -> dict:
    """What the manifest records about how the features were made."""
    return {
        "image_encoder": features.image_encoder,
        "image_weights": features.image_weights,
        "image_size": features.image_size,
        "text_encoder": features.text_encoder,
        "text_pooling": features.text_pooling,
        "sequence_length": features.sequence_length,
        "augment_seed": features.augment_seed,
        "image_augmenter": image_augmenter.get_config(),
        "caption_augmenter": caption_augmenter.get_config(),
    }


def extract_features(config: config_lib.Config, dataset: CaptionDataset, out_dir: str,
                     progress: bool = True) -> tuple[FeatureStore, FeatureExtractor]:
    """Extracts (or resumes extracting) the features of `dataset` into `out_dir`."""
    features = config.features
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(features.precision)
    try:
        image_encoder = build_image_encoder_from_config(features)
        text_encoder = build_text_encoder(features)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    image_augmenter = ImageAugmenter(seed=features.augment_seed)
    caption_augmenter = CaptionAugmenter(seed=features.augment_seed)
    extractor = FeatureExtractor(
        image_encoder, text_encoder, features.image_size, image_augmenter.augment,
        caption_augmenter.augment, batch_size=features.extract_batch_size, progress=progress)
    info = encoder_info(features, image_augmenter, caption_augmenter)
    return extractor.extract(dataset, out_dir, info), extractor
