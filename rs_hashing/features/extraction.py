"""Extracts a dataset's feature store with the frozen encoders a `FeatureConfig` names."""

from __future__ import annotations

import os

from rs_hashing import config as config_lib
from rs_hashing.data.caption_augmenter import CaptionAugmenter
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.data.image_augmenter import ImageAugmenter
from rs_hashing.encoders.frozen_encoders import FrozenEncoders
from rs_hashing.errors import FeatureStoreError
from rs_hashing.features.feature_extractor import FeatureExtractor
from rs_hashing.features.feature_store import MANIFEST, FeatureStore
from rs_hashing.features.image_pipeline import radiometry_of

# Manifest fields that describe how features were made; a complete store whose manifest
# agrees on all of them is reused instead of extracted again.
ENCODER_INFO_KEYS = ("image_encoder", "image_weights", "image_size", "text_encoder", "text_pooling",
                     "sequence_length", "augment_seed", "image_augmenter", "caption_augmenter",
                     "precision", "encoders", "radiometry")


def encoder_info(features: config_lib.FeatureConfig, encoders: FrozenEncoders,
                 image_augmenter: ImageAugmenter, caption_augmenter: CaptionAugmenter) -> dict:
    """What the manifest records about how the features were made, the encoders'
    identity (package, version, weights fingerprint) included."""
    return {
        "image_encoder": features.image_encoder,
        "image_weights": features.image_weights,
        "image_size": features.image_size,
        "text_encoder": features.text_encoder,
        "text_pooling": features.text_pooling,
        "sequence_length": features.sequence_length,
        "precision": features.precision,
        "augment_seed": features.augment_seed,
        "image_augmenter": image_augmenter.get_config(),
        "caption_augmenter": caption_augmenter.get_config(),
        "encoders": encoders.identity(),
        "radiometry": radiometry_of(features).to_dict(),
    }


def _finished_store(out_dir: str, dataset: CaptionDataset, info: dict) -> FeatureStore | None:
    """The complete store in `out_dir` if it was made from this data with these
    encoders and settings, else None."""
    if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        return None
    try:
        store = FeatureStore.open(out_dir, dataset)
    except FeatureStoreError:
        return None
    made_with = {key: store.manifest.get(key) for key in ENCODER_INFO_KEYS}
    return store if made_with == {key: info.get(key) for key in ENCODER_INFO_KEYS} else None


def extract_features(config: config_lib.Config, dataset: CaptionDataset, out_dir: str,
                     progress: bool = True, encoders: FrozenEncoders | None = None) -> FeatureStore:
    """Extracts (or resumes extracting) the features of `dataset` into `out_dir`; a
    finished store of the same data and encoder settings is reused as it is.

    Args:
        config: the run configuration (its `features` section is used).
        dataset: the caption dataset.
        out_dir: the feature store folder.
        progress: show progress bars.
        encoders: the config's encoders, when the caller already has them (built on
            first use otherwise; a reused store builds none).
    """
    features = config.features
    encoders = encoders or FrozenEncoders(features, dtype_policy=features.precision)
    image_augmenter = ImageAugmenter(seed=features.augment_seed)
    caption_augmenter = CaptionAugmenter(seed=features.augment_seed)
    info = encoder_info(features, encoders, image_augmenter, caption_augmenter)
    finished = _finished_store(out_dir, dataset, info)
    if finished is not None:
        return finished
    extractor = FeatureExtractor(
        encoders.image, encoders.text, features.image_size, image_augmenter.augment,
        caption_augmenter.augment, batch_size=features.encode_batch_size, progress=progress,
        radiometry=radiometry_of(features))
    return extractor.extract(dataset, out_dir, info)
