"""Extracts a dataset's feature store with the frozen encoders a `FeatureConfig` names.

With trainable encoder tops (`model.image_trainable_stages`, `model.text_trainable_layers`
above 0; `rs_hashing.encoders.encoder_towers`) the store caches the activations of the
encoders' frozen bottoms instead of their features, in `features.activation_dtype`.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from rs_hashing import config as config_lib
from rs_hashing.data.caption_augmenter import CaptionAugmenter
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.data.image_augmenter import ImageAugmenter
from rs_hashing.encoders.encoder_towers import EncoderTowers
from rs_hashing.encoders.frozen_encoders import FrozenEncoders
from rs_hashing.errors import FeatureStoreError
from rs_hashing.features.feature_extractor import FeatureExtractor
from rs_hashing.features.feature_store import MANIFEST, SHAPE_KEYS, FeatureStore
from rs_hashing.features.image_pipeline import radiometry_of
from rs_hashing.training import stages

# Manifest fields that describe how features were made; a complete store whose manifest
# agrees on all of them is reused instead of extracted again.
ENCODER_INFO_KEYS = ("image_encoder", "image_weights", "image_size", "text_encoder", "text_pooling",
                     "sequence_length", "augment_seed", "image_augmenter", "caption_augmenter",
                     "precision", "encoders", "radiometry", "towers")


def towers_info(towers: EncoderTowers, dtype: str) -> dict:
    """The manifest's `towers` entry before the shapes are known: the cut, the dtype of
    the cached activations and the widths of the tops' outputs (the heads' inputs)."""
    encoders = towers.encoders
    return {**towers.cut(), "dtype": dtype, "image_dim": int(encoders.image.output_shape[-1]),
            "text_dim": int(encoders.text.output_dim)}


def encoder_info(features: config_lib.FeatureConfig, encoders: FrozenEncoders,
                 image_augmenter: ImageAugmenter, caption_augmenter: CaptionAugmenter,
                 towers: EncoderTowers | None = None) -> dict:
    """What the manifest records about how the features were made, the encoders'
    identity (package, version, weights fingerprint) included, and with trainable tops
    (`towers`) where the encoders are cut (the `towers` entry; absent for frozen
    features, whose manifests are as they always were)."""
    info = {
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
    if towers is not None and towers.trainable:
        info["towers"] = towers_info(towers, features.activation_dtype)
    return info


class _TextStates:
    """The text bottom as `FeatureExtractor` calls a text encoder: `encode(captions,
    batch_size)` -> {"states", "padding_mask"}."""

    def __init__(self, towers: EncoderTowers):
        self.towers = towers

    def encode(self, texts: list[str], batch_size: int) -> dict:
        return self.towers.encode_text_states(texts, batch_size)


def _finished_store(out_dir: str, dataset: CaptionDataset, info: dict) -> FeatureStore | None:
    """The complete store in `out_dir` if it was made from this data with these
    encoders and settings, else None."""
    if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        return None
    try:
        store = FeatureStore.open(out_dir, dataset)
    except FeatureStoreError:
        return None
    return store if not _differing_settings(store.manifest, info, ENCODER_INFO_KEYS) else None


def _differing_settings(manifest: dict, info: dict, keys) -> list[str]:
    """The `keys` whose entry in a store's manifest differs from an extraction's `info`."""
    made_with = {key: manifest.get(key) for key in keys}
    if made_with.get("towers"):  # The writer added the arrays' shapes.
        made_with["towers"] = {k: v for k, v in made_with["towers"].items() if k not in SHAPE_KEYS}
    # Compared as JSON gives them back: the manifest's lists are the info's tuples.
    wanted = json.loads(json.dumps({key: info.get(key) for key in keys}))
    return [key for key in keys if made_with[key] != wanted[key]]


def _array_side(towers: dict | None, side: str) -> tuple[str | None, str]:
    """(where the encoder is cut on `side`, None for features; the arrays' dtype) of a
    manifest's `towers` entry (None: a store of frozen float32 features)."""
    return (None, "float32") if not towers else (towers.get(f"{side}_cut"), towers["dtype"])


def reusable_sides(store: FeatureStore, info: dict) -> tuple[bool, bool]:
    """(images, captions): which arrays of `store` an extraction described by `info`
    would compute alike, so can take as they are: those of a side whose encoder is cut
    at the same layer (or not at all on both), in the same dtype or in float32 (cast
    as extraction casts). The store must have been made with the same encoders,
    augmenters and settings (every `ENCODER_INFO_KEYS` entry but the cut); else a
    FeatureStoreError names what differs."""
    differ = _differing_settings(store.manifest, info, [key for key in ENCODER_INFO_KEYS if key != "towers"])
    if differ:
        raise FeatureStoreError(f"{store.path}: made with other {', '.join(differ)} than this extraction; none of "
                                "its arrays can be reused")
    sides = []
    for side in ("image", "text"):
        (cut, kind), (our_cut, our_kind) = _array_side(store.manifest.get("towers"), side), _array_side(
            info.get("towers"), side)
        sides.append(cut == our_cut and kind in (our_kind, "float32"))
    return sides[0], sides[1]


def extract_features(config: config_lib.Config, dataset: CaptionDataset, out_dir: str,
                     progress: bool = True, encoders: FrozenEncoders | None = None,
                     reuse_from: Sequence[str] = ()) -> FeatureStore:
    """Extracts (or resumes extracting) the features of `dataset` into `out_dir`; a
    finished store of the same data and encoder settings is reused as it is.

    Args:
        config: the run configuration (its `features` section is used).
        dataset: the caption dataset.
        out_dir: the feature store folder.
        progress: show progress bars.
        encoders: the config's encoders, when the caller already has them (built on
            first use otherwise; a reused store builds none).
        reuse_from: complete stores of the same data and encoders whose image or
            caption arrays this store would compute alike (`reusable_sides`: e.g. a
            store with the image top and one with the text top, for both tops); their
            arrays are taken instead of encoding again. A store that offers neither
            side, or was made otherwise, is refused by name.
    """
    features = config.features
    encoders = encoders or FrozenEncoders(features, dtype_policy=features.precision)
    towers = EncoderTowers.of_config(config, encoders)
    image_augmenter = ImageAugmenter(seed=features.augment_seed)
    caption_augmenter = CaptionAugmenter(seed=features.augment_seed)
    info = encoder_info(features, encoders, image_augmenter, caption_augmenter, towers)
    finished = _finished_store(out_dir, dataset, info)
    if finished is not None:
        return finished
    extractor = FeatureExtractor(
        towers.image_bottom, _TextStates(towers) if towers.text_layers else encoders.text, features.image_size,
        image_augmenter.augment, caption_augmenter.augment, batch_size=features.encode_batch_size,
        progress=progress, radiometry=radiometry_of(features),
        dtype=features.activation_dtype if towers.trainable else "float32")
    taken = set()  # the sides an earlier store gave
    for path in reuse_from:
        source = FeatureStore.open(path, dataset, check_values=False)
        images, texts = reusable_sides(source, info)
        images, texts = images and "image" not in taken, texts and "text" not in taken
        if not (images or texts):
            raise FeatureStoreError(f"{path}: offers nothing to reuse (its encoders are cut elsewhere, or its "
                                    f"arrays are not float32 nor {extractor.dtype}, or an earlier store gave the same "
                                    "side)")
        extractor.seed_shards(dataset, out_dir, info, source, images, texts)
        taken.update(side for side, used in (("image", images), ("text", texts)) if used)
    return extractor.extract(dataset, out_dir, info)


def extract_run_stores(config: config_lib.Config, dataset: CaptionDataset, progress: bool = True,
                       encoders: FrozenEncoders | None = None, reuse_from: Sequence[str] = (),
                       missing_only: bool = False) -> list[FeatureStore]:
    """Every feature store that training `config` reads, extracted or reused, in order
    (`stages.store_configs`: the frozen store, then the tuned stage's store of a
    two-stage run; else the config's own store at `features.features`).

    The tuned stage's store takes the frozen store's arrays of the side whose encoder
    stays whole in both (the captions, when only the image top trains), instead of
    encoding them again. `reuse_from` is for the first store (`extract_features`).
    `missing_only` leaves every store that has a manifest as it is, unopened (training
    opens and checks it, `run_kit.prepare`), and returns the stores it extracted.
    """
    configs = stages.store_configs(config)
    encoders = encoders or FrozenEncoders(config.features, dtype_policy=config.features.precision)
    # The tuned store takes the side that stays whole from the frozen store.
    tuned_sources = [] if all(stages.tops(config)) else [configs[0].features.features]
    made = []
    for i, store_config in enumerate(configs):
        sources = list(reuse_from) if i == 0 else tuned_sources
        path = store_config.features.features
        finished = os.path.isfile(os.path.join(path, MANIFEST))
        if missing_only and finished:
            continue
        if len(configs) > 1 and progress and not finished:
            print(f"Feature store {i + 1} of {len(configs)} ({'frozen stage' if i == 0 else 'tuned stage'}): "
                  f"{path}", flush=True)
        made.append(extract_features(store_config, dataset, path, progress, encoders, reuse_from=sources))
    return made
