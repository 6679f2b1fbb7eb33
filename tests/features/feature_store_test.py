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
