"""The DUCH authors' code benchmark: the export of a feature store to their input format
(HDF5 + JSON) and the comparison of their split with rs_hashing's."""

import json
import os

import numpy as np
import pytest

from benchmarks import authors_duch
from rs_hashing.data import loaders
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.features.feature_store import FeatureStore
from tests import testing


def _store(root, captions_per_image=5):
    items = [{"filename": f"{c}_{i}.jpg", "captions": [f"{c} {i} caption {j}" for j in range(captions_per_image)]}
             for c in ("beach", "forest") for i in range(3)]
    dataset = loaders.load_karpathy(testing.write_karpathy(str(root / "data"), items))
    rng = np.random.default_rng(0)
    n, m = len(dataset), dataset.num_captions
    arrays = {"image": rng.normal(size=(n, 4)), "image_aug": rng.normal(size=(n, 4)),
              "text": rng.normal(size=(m, 3)), "text_aug": rng.normal(size=(m, 3))}
    FeatureStore.write(str(root / "store"), arrays, dataset, {})
    return FeatureStore.open(str(root / "store"), dataset), dataset


def test_export_holds_the_store_in_store_order_with_five_captions_per_image(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install h5py)")
    store, dataset = _store(tmp_path)
    paths = authors_duch.export_store(store, dataset, str(tmp_path / "export"))
    for attr, (_, name, array_name) in authors_duch.EXPORT_FILES.items():
        with h5py.File(paths[attr], "r") as f:
            assert list(f) == [name]
            np.testing.assert_array_equal(f[name][:], getattr(store, array_name))
    with open(paths["dataset_json_for_model"], encoding="utf-8") as f:
        images = json.load(f)["images"]
    assert [im["filename"] for im in images] == list(dataset.filenames)
    assert [im["classcode"] for im in images] == store.labels.tolist()
    # Their code takes row 5 i + j of the caption files as caption j of image i.
    flat = [s["raw"] for im in images for s in im["sentences"]]
    assert flat[5 * 4 + 2] == "forest 1 caption 2" == dataset.captions[4][2]
    assert [s["sentid"] for im in images for s in im["sentences"]] == list(range(30))
    assert store.caption_offsets.tolist() == list(range(0, 31, 5))
    # A finished export is reused, not written again.
    mtime = os.path.getmtime(paths["image_emb_for_model"])
    assert authors_duch.export_store(store, dataset, str(tmp_path / "export")) == paths
    assert os.path.getmtime(paths["image_emb_for_model"]) == mtime


def test_export_refuses_other_than_five_captions_per_image(tmp_path):
    store, dataset = _store(tmp_path, captions_per_image=4)
    message = r"exactly 5 captions per image.*6 images differ, the first is image 0 \('beach_0.jpg'\) with 4"
    with pytest.raises(ValueError, match=message):
        authors_duch.export_store(store, dataset, str(tmp_path / "export"))
    assert not os.path.exists(tmp_path / "export")


def test_compare_split_tells_split_and_caption_differences_apart():
    ours = ProtocolSplit.make(40, [5] * 40, split_seed=3, caption_seed=3)
    theirs = {p: getattr(ours, p) for p in authors_duch.PARTS}
    theirs.update({f"{p}_caption": ours.caption_choice[getattr(ours, p)] for p in authors_duch.PARTS})
    assert authors_duch.compare_split(theirs, ours) == {
        "split_matches": True, "captions_match": True,
        "caption_mismatches": {"train": 0, "query": 0, "database": 0}}
    theirs["query_caption"] = (theirs["query_caption"] + 1) % 5
    result = authors_duch.compare_split(theirs, ours)
    assert (result["split_matches"], result["captions_match"]) == (True, False)
    assert result["caption_mismatches"] == {"train": 0, "query": len(ours.query), "database": 0}
    other = ProtocolSplit.make(40, [5] * 40, split_seed=4, caption_seed=3)
    assert authors_duch.compare_split(theirs, other)["split_matches"] is False
