import os
import shutil

import keras
import numpy as np
import pytest

from rs_hashing import config as config_lib
from rs_hashing.errors import DatasetError
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index import archive_indexing
from rs_hashing.index.hamming_index import HammingIndex
from tests import testing
from tests import tiny_run


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    tiny_run.make_tiny_run(str(root / "run"))
    tiny_run.write_tile_folder(str(root / "images"), 7)
    (root / "images" / "notes.txt").write_text("not an image")
    (root / "images" / ".hidden.png").write_bytes(b"")
    keras.utils.set_random_seed(0)
    encoder = HashingModel.from_run(str(root / "run"))
    image_root, items = archive_indexing.folder_items(str(root / "images"))
    index = archive_indexing.index_archive(encoder, image_root, items, str(root / "a.index"),
                                           progress=False, source="test folder")
    return encoder, index, root


def test_folder_items_lists_images_recursively_in_order(indexed):
    _, _, root = indexed
    image_root, items = archive_indexing.folder_items(str(root / "images"))
    assert image_root == str(root / "images")
    assert [item["file"] for item in items] == [
        "sub/tile_02.png", "sub/tile_05.png", "tile_00.png", "tile_01.png", "tile_03.png",
        "tile_04.png", "tile_06.png"]
    with pytest.raises(DatasetError, match="does not exist"):
        archive_indexing.folder_items(str(root / "missing"))
    os.makedirs(root / "empty", exist_ok=True)
    with pytest.raises(DatasetError, match="no images"):
        archive_indexing.folder_items(str(root / "empty"))


def test_index_holds_every_image_with_its_metadata_and_origin(indexed):
    encoder, index, root = indexed
    loaded = archive_indexing.open_index(str(root / "a.index"), encoder)
    assert loaded.count == 7 and loaded.bits == 8 and loaded.structure == "flat"
    assert loaded.metadata([0, 6]) == [{"file": "sub/tile_02.png"}, {"file": "tile_06.png"}]
    assert loaded.info["run"] == str(root / "run") and loaded.info["image_root"] == str(root / "images")
    assert loaded.info["model"] == encoder.fingerprint() and loaded.info["source"] == "test folder"


def test_search_by_image_and_text_equals_the_index_on_their_codes(indexed):
    encoder, index, root = indexed
    query = str(root / "images" / "tile_03.png")
    hits = archive_indexing.search_archive(encoder, index, image=query, k=7)
    expected_ids, expected_distances = index.search(encoder.encode_images([query]).codes, 7)
    assert [h["id"] for h in hits] == expected_ids[0].tolist()
    assert [h["hamming"] for h in hits] == expected_distances[0].tolist()
    assert {"id": 4, "hamming": 0, "file": "tile_03.png"} in hits  # the image finds itself
    text_hits = archive_indexing.search_archive(encoder, index, text="a sandy beach", k=3)
    text_ids, _ = index.search(encoder.encode_texts(["a sandy beach"]).codes, 3)
    assert [h["id"] for h in text_hits] == text_ids[0].tolist()
    assert all(set(h) == {"id", "hamming", "file"} for h in text_hits)
    with pytest.raises(ValueError, match="exactly one"):
        archive_indexing.search_archive(encoder, index, text="x", image=query)


def test_an_index_of_another_model_is_refused(indexed, tmp_path):
    _, _, root = indexed
    other = HashingModel.from_run(tiny_run.make_tiny_run(str(tmp_path / "other"), seed=3))
    with pytest.raises(ValueError, match=r"a.index: was made with the run .*rebuild it"):
        archive_indexing.open_index(str(root / "a.index"), other)
    wrong_bits = HammingIndex(16, info={"model": other.fingerprint()})
    wrong_bits.add(np.ones((1, 16), np.int8))
    wrong_bits.save(str(tmp_path / "w.index"))
    with pytest.raises(ValueError, match="holds 16-bit codes, expected 8-bit"):
        archive_indexing.open_index(str(tmp_path / "w.index"), other)


def test_dataset_items_keep_captions_and_classes(tmp_path):
    items = [{"filename": f"{c}_{i}.jpg", "captions": [f"a {c} scene {i}", "another"]}
             for c in ("beach", "forest") for i in range(2)]
    caption_file = testing.write_karpathy(str(tmp_path), items)
    data = config_lib.DataConfig(dataset="karpathy", caption_file=caption_file)
    root, found = archive_indexing.dataset_items(data)
    assert root == str(tmp_path / "RSICD_images")
    assert found[0] == {"file": "beach_0.jpg", "caption": "a beach scene 0", "class": "beach"}
    assert [f["class"] for f in found] == ["beach", "beach", "forest", "forest"]


def test_data_config_for_archive():
    run = config_lib.apply_overrides(config_lib.get_preset("smoke"), {"data_dir": "/runs/data"})
    assert archive_indexing.data_config_for_archive(run) == run.data
    rsicd = archive_indexing.data_config_for_archive(run, "rsicd", {"data_dir": "/d", "image_dir": None})
    assert (rsicd.dataset, rsicd.data_dir, rsicd.image_dir) == ("rsicd", "/d", "")
    with pytest.raises(KeyError, match="not data fields: bits"):
        archive_indexing.data_config_for_archive(run, None, {"bits": 16})
