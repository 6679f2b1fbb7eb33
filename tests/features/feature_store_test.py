import json
import os

import numpy as np
import pytest

from rs_hashing.data import loaders
from rs_hashing.errors import FeatureStoreError
from rs_hashing.features.feature_store import FeatureStore
from tests import testing


def _dataset(root, n=3):
    items = [{"filename": f"{c}_{i}.jpg", "captions": [f"{c} {i} a", f"{c} {i} b"]}
             for c in ("beach", "forest") for i in range(n)]
    return loaders.load_karpathy(testing.write_karpathy(str(root), items))


def _arrays(dataset, image_dim=5, text_dim=3):
    rng = np.random.default_rng(0)
    n, m = len(dataset), dataset.num_captions
    return {"image": rng.normal(size=(n, image_dim)), "image_aug": rng.normal(size=(n, image_dim)),
            "text": rng.normal(size=(m, text_dim)), "text_aug": rng.normal(size=(m, text_dim))}


def test_write_then_open_round_trip(tmp_path):
    dataset = _dataset(tmp_path / "data")
    arrays = _arrays(dataset)
    FeatureStore.write(str(tmp_path / "store"), arrays, dataset, {"image_encoder": "x"})
    store = FeatureStore.open(str(tmp_path / "store"), dataset)
    np.testing.assert_allclose(store.image, arrays["image"].astype(np.float32))
    np.testing.assert_allclose(store.text_aug, arrays["text_aug"].astype(np.float32))
    assert store.image_dim == 5 and store.text_dim == 3 and store.num_images == 6
    assert store.caption_offsets.tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert store.captions_of(2) == slice(4, 6)
    assert store.manifest["image_encoder"] == "x" and store.manifest["filenames"][0] == "beach_0.jpg"
    np.testing.assert_array_equal(store.labels, dataset.labels)


def test_store_for_other_data_is_refused(tmp_path):
    dataset = _dataset(tmp_path / "data")
    FeatureStore.write(str(tmp_path / "store"), _arrays(dataset), dataset, {})
    other = _dataset(tmp_path / "other", n=2)
    with pytest.raises(FeatureStoreError, match="made for 6 images / 12 captions, the dataset has 4 / 8"):
        FeatureStore.open(str(tmp_path / "store"), other)
    items = [{"filename": f"{c}_{i}.jpg", "captions": [f"{c} {i} a", f"changed {i}"]}
             for c in ("beach", "forest") for i in range(3)]
    changed = loaders.load_karpathy(testing.write_karpathy(str(tmp_path / "changed"), items))
    with pytest.raises(FeatureStoreError, match="made for other data"):
        FeatureStore.open(str(tmp_path / "store"), changed)


def test_wrong_shape_nan_and_missing_files_are_refused(tmp_path):
    dataset = _dataset(tmp_path / "data")
    path = str(tmp_path / "store")
    FeatureStore.write(path, _arrays(dataset), dataset, {})
    np.save(os.path.join(path, "text.npy"), np.zeros((12, 4), np.float32))
    with pytest.raises(FeatureStoreError, match=r"text.npy: shape \(12, 4\), expected \(12, 3\)"):
        FeatureStore.open(path)
    bad = np.zeros((12, 3), np.float32)
    bad[7, 1] = np.nan
    np.save(os.path.join(path, "text.npy"), bad)
    with pytest.raises(FeatureStoreError, match="text.npy: contains NaN or infinity \\(first at row 7\\)"):
        FeatureStore.open(path)
    os.remove(os.path.join(path, "text.npy"))
    with pytest.raises(FeatureStoreError, match="text.npy: missing"):
        FeatureStore.open(path)
    os.remove(os.path.join(path, "manifest.json"))
    with pytest.raises(FeatureStoreError, match="did not finish"):
        FeatureStore.open(path)
    with pytest.raises(FeatureStoreError, match="does not exist"):
        FeatureStore.open(str(tmp_path / "nowhere"))


def test_corrupt_manifest(tmp_path):
    dataset = _dataset(tmp_path / "data")
    path = str(tmp_path / "store")
    FeatureStore.write(path, _arrays(dataset), dataset, {})
    with open(os.path.join(path, "manifest.json"), "w") as f:
        f.write("{")
    with pytest.raises(FeatureStoreError, match="manifest.json: not valid JSON"):
        FeatureStore.open(path)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"format_version": 99}, f)
    with pytest.raises(FeatureStoreError, match="format_version 99"):
        FeatureStore.open(path)


TOWERS = {"image_trainable_stages": 1, "text_trainable_layers": 1, "image_cut": "conv2",
          "text_cut": "transformer_layer_1", "dtype": "float16", "image_dim": 16, "text_dim": 8}


def _activations(dataset, length=5):
    """Cached activations of a store for trainable tops: [N, 2, 2, 4] images, [M, T, 8]
    token states and their masks (caption c has 2 + c % 3 tokens)."""
    rng = np.random.default_rng(1)
    n, m = len(dataset), dataset.num_captions
    masks = (np.arange(length)[None, :] < 2 + np.arange(m)[:, None] % 3).astype(np.int8)
    return {"image": rng.normal(size=(n, 2, 2, 4)), "image_aug": rng.normal(size=(n, 2, 2, 4)),
            "text": rng.normal(size=(m, length, 8)), "text_aug": rng.normal(size=(m, length, 8)),
            "text_mask": masks, "text_aug_mask": masks[::-1].copy()}


def test_a_store_of_activations_round_trips_with_its_cut_dtype_and_shapes(tmp_path):
    dataset = _dataset(tmp_path / "data")
    arrays = _activations(dataset)
    FeatureStore.write(str(tmp_path / "store"), arrays, dataset, {"towers": TOWERS})
    store = FeatureStore.open(str(tmp_path / "store"), dataset)
    assert store.image.dtype == np.float16 and store.image.shape == (6, 2, 2, 4)
    assert store.text.shape == (12, 5, 8) and store.text_mask.dtype == np.int8
    np.testing.assert_array_equal(store.text_aug_mask, arrays["text_aug_mask"])
    np.testing.assert_array_equal(store.text, arrays["text"].astype(np.float16))
    # The heads' inputs are the tops' outputs, not the cached shapes.
    assert store.image_dim == 16 and store.text_dim == 8 and store.cut() == (1, 1)
    assert store.towers == {**TOWERS, "image_shape": [2, 2, 4], "text_shape": [5, 8]}


def test_a_store_of_frozen_features_is_written_as_before(tmp_path):
    dataset = _dataset(tmp_path / "data")
    FeatureStore.write(str(tmp_path / "store"), _arrays(dataset), dataset, {"image_encoder": "x"})
    store = FeatureStore.open(str(tmp_path / "store"), dataset)
    assert store.towers is None and store.cut() == (0, 0) and store.text_mask is None
    assert sorted(os.listdir(tmp_path / "store")) == ["caption_offsets.npy", "image.npy", "image_aug.npy",
                                                     "labels.npy", "manifest.json", "text.npy", "text_aug.npy"]
    with open(tmp_path / "store" / "manifest.json", encoding="utf-8") as f:
        assert "towers" not in json.load(f)


def test_activations_of_the_wrong_dtype_shape_or_values_are_refused(tmp_path):
    dataset = _dataset(tmp_path / "data")
    path = str(tmp_path / "store")
    arrays = _activations(dataset)
    FeatureStore.write(path, arrays, dataset, {"towers": TOWERS})
    np.save(os.path.join(path, "image_aug.npy"), arrays["image_aug"].astype(np.float32))
    with pytest.raises(FeatureStoreError, match="image_aug.npy: dtype float32, expected float16"):
        FeatureStore.open(path)
    np.save(os.path.join(path, "image_aug.npy"), arrays["image_aug"].astype(np.float16))
    np.save(os.path.join(path, "text_mask.npy"), arrays["text_mask"][:, :4])
    with pytest.raises(FeatureStoreError, match=r"text_mask.npy: shape \(12, 4\), expected \(12, 5\)"):
        FeatureStore.open(path)
    np.save(os.path.join(path, "text_mask.npy"), arrays["text_mask"])
    bad = arrays["text"].astype(np.float16)
    bad[9, 4, 2] = np.inf
    np.save(os.path.join(path, "text.npy"), bad)
    with pytest.raises(FeatureStoreError, match=r"text.npy: contains NaN or infinity \(first at row 9\)"):
        FeatureStore.open(path)
