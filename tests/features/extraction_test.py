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
