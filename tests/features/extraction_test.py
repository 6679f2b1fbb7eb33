"""Tests for rs_hashing.features.extraction: which store a config's extraction makes, and
when a finished one is reused (tiny encoders on 16 px images)."""

import numpy as np
import pytest

from rs_hashing.data import loaders
from rs_hashing.features import extraction
from rs_hashing.features.feature_extractor import FeatureExtractor
from tests.training.tiny_store import make_image_archive, tower_config


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    data = make_image_archive(root, per_class=2)
    return root, data, loaders.load_dataset(data)


def test_a_config_with_trainable_tops_caches_activations_and_reuses_a_finished_store(archive, tmp_path, monkeypatch):
    root, data, dataset = archive
    config = tower_config(data, tmp_path, stages=1, layers=1)
    store = extraction.extract_features(config, dataset, config.features.features, progress=False)
    assert store.cut() == (1, 1) and store.image.dtype == np.float16
    assert {key: store.towers[key] for key in ("image_cut", "text_cut", "image_dim", "text_dim")} == {
        "image_cut": "conv2", "text_cut": "transformer_layer_1", "image_dim": 16, "text_dim": 16}

    monkeypatch.setattr(FeatureExtractor, "extract", _no_extraction)
    reused = extraction.extract_features(config, dataset, config.features.features, progress=False)
    np.testing.assert_array_equal(reused.text, store.text)
    monkeypatch.undo()
    # Another cut is another store: extracted again, never mistaken for this one.
    other = tower_config(data, tmp_path, stages=2, layers=0)
    store = extraction.extract_features(other, dataset, other.features.features, progress=False)
    assert store.cut() == (2, 0) and store.text_mask is None and store.image.shape[1:] == (16, 16, 3)
    assert store.text.shape == (dataset.num_captions, 16)  # the frozen text encoder's features


def test_a_frozen_config_writes_the_manifest_of_before_and_reuses_it(archive, tmp_path, monkeypatch):
    _, data, dataset = archive
    config = tower_config(data, tmp_path, stages=0, layers=0)
    store = extraction.extract_features(config, dataset, config.features.features, progress=False)
    assert store.towers is None and store.image.dtype == np.float32 and store.image.shape == (len(dataset), 16)
    assert "towers" not in store.manifest
    # The augmenters' settings hold tuples, the manifest lists: still the same store.
    monkeypatch.setattr(FeatureExtractor, "extract", _no_extraction)
    extraction.extract_features(config, dataset, config.features.features, progress=False)


def _no_extraction(*args, **kwargs):
    raise AssertionError("a finished store of the same settings must be reused")


def _no_encoding(*args, **kwargs):
    raise AssertionError("arrays offered by --reuse_from must not be encoded again")


def test_a_store_takes_the_arrays_of_stores_cut_alike_instead_of_encoding_them(archive, tmp_path, monkeypatch):
    from rs_hashing.encoders.encoder_towers import EncoderTowers  # pylint: disable=import-outside-toplevel
    from rs_hashing.errors import FeatureStoreError  # pylint: disable=import-outside-toplevel

    _, data, dataset = archive

    def extract(name, stages, layers, reuse_from=(), **overrides):
        config = tower_config(data, tmp_path / name, stages=stages, layers=layers, **overrides)
        return extraction.extract_features(config, dataset, config.features.features, progress=False,
                                           reuse_from=[store.path for store in reuse_from])

    frozen, image_top, text_top, both = extract("frozen", 0, 0), extract("image", 1, 0), extract("text", 0, 1), \
        extract("both", 1, 1)
    monkeypatch.setattr(FeatureExtractor, "_image_shard", _no_encoding)
    # The frozen store's float32 image features, cast, are the text-top store's image side.
    text_again = extract("text_again", 0, 1, reuse_from=[frozen])
    np.testing.assert_array_equal(text_again.image, text_top.image)
    assert text_again.image.dtype == np.float16 and text_again.manifest["extraction"]["shards_computed"] == 0
    # Both tops from the image-top store's maps and the text-top store's token states.
    monkeypatch.setattr(EncoderTowers, "encode_text_states", _no_encoding)
    reused = extract("both_again", 1, 1, reuse_from=[image_top, text_top])
    for name in ("image", "image_aug", "text", "text_aug", "text_mask", "text_aug_mask"):
        np.testing.assert_array_equal(getattr(reused, name), getattr(both, name), err_msg=name)
    assert reused.towers == both.towers
    with pytest.raises(FeatureStoreError, match="frozen/store: offers nothing to reuse"):
        extract("refused", 1, 1, reuse_from=[frozen])
    with pytest.raises(FeatureStoreError, match="image/store: made with other augment_seed, image_augmenter, "
                                                "caption_augmenter than this extraction"):
        extract("refused_seed", 1, 1, reuse_from=[image_top], augment_seed=7)


def test_a_two_stage_run_gets_its_frozen_store_and_the_tuned_store_named_after_it(archive, tmp_path, monkeypatch):
    """extract_run_stores: the frozen store at `features`, the image top's store at
    `features` + `_image1`, whose caption arrays are the frozen store's (cast), not
    encoded again; a one-stage config gets its own store only."""
    _, data, dataset = archive
    config = tower_config(data, tmp_path, stages=1, layers=0, tuned_epochs=2)
    frozen = extraction.extract_features(tower_config(data, tmp_path, stages=0, layers=0), dataset,
                                         config.features.features, progress=False)

    def no_caption_encoding(self, *args, **kwargs):
        raise AssertionError("the tuned store's captions must come from the frozen store")

    monkeypatch.setattr(type(frozen_text_encoder(config)), "encode", no_caption_encoding)
    stores = extraction.extract_run_stores(config, dataset, progress=False)
    assert [store.path for store in stores] == [config.features.features, config.features.features + "_image1"]
    assert stores[0].cut() == (0, 0) and stores[1].cut() == (1, 0)
    np.testing.assert_array_equal(stores[0].image, frozen.image)
    np.testing.assert_array_equal(stores[1].text, frozen.text.astype(np.float16))
    np.testing.assert_array_equal(stores[1].text_aug, frozen.text_aug.astype(np.float16))
    assert stores[1].image.shape[1:] == (8, 8, 8) and stores[1].manifest["extraction"]["shards_computed"] > 0
    monkeypatch.undo()
    one_stage = tower_config(data, tmp_path / "one", stages=1, layers=0)
    assert [s.cut() for s in extraction.extract_run_stores(one_stage, dataset, progress=False)] == [(1, 0)]
    # Training's call (missing_only): made stores are neither extracted again nor opened here.
    monkeypatch.setattr(FeatureExtractor, "extract", _no_extraction)
    monkeypatch.setattr(extraction.FeatureStore, "open", _no_extraction)
    assert extraction.extract_run_stores(config, dataset, progress=False, missing_only=True) == []


def frozen_text_encoder(config):
    from rs_hashing.encoders.frozen_encoders import FrozenEncoders  # pylint: disable=import-outside-toplevel
    return FrozenEncoders(config.features).text
