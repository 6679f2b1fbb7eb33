import json
import os

import numpy as np
import pytest

from rs_hashing import config as config_lib
from rs_hashing.data import loaders
from rs_hashing.errors import DatasetError
from tests import testing


def _items(n=3):
    return [{"filename": f"{cls}_{i}.jpg", "captions": [f"a {cls} scene number {i} .", f"{cls} {i}"]}
            for cls in ("beach", "forest") for i in range(1, n + 1)]


def test_karpathy_layout_with_classes_from_file_names(tmp_path):
    path = testing.write_karpathy(str(tmp_path), _items())
    dataset = loaders.load_karpathy(path)
    assert len(dataset) == 6 and dataset.num_captions == 12
    assert dataset.class_names == ("beach", "forest")
    np.testing.assert_array_equal(dataset.labels, [0, 0, 0, 1, 1, 1])
    assert dataset.image_dir == os.path.join(str(tmp_path), "RSICD_images")
    assert dataset.captions[0] == ("a beach scene number 1 .", "beach 1")
    texts, owner = dataset.flat_captions()
    assert texts[2] == "a beach scene number 2 ." and owner.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    np.testing.assert_array_equal(dataset.caption_offsets(), [0, 2, 4, 6, 8, 10, 12])


def test_label_field_wins_over_file_name_and_label_file_wins_over_both(tmp_path):
    items = [{"filename": "1.tif", "captions": ["x"], "classname": "agricultural"},
             {"filename": "2.tif", "captions": ["y"], "classname": "airplane"}]
    path = testing.write_karpathy(str(tmp_path), items, image_dir_name="imgs")
    assert loaders.load_karpathy(path).class_names == ("agricultural", "airplane")
    label_file = tmp_path / "labels.csv"
    label_file.write_text("filename,label\n1.tif,beach\n")
    dataset = loaders.load_karpathy(path, label_file=str(label_file))
    assert [dataset.class_names[l] for l in dataset.labels] == ["beach", "airplane"]


def test_class_from_filename():
    assert loaders.class_from_filename("denseresidential_12.jpg") == "denseresidential"
    assert loaders.class_from_filename("sub/airport_1.png") == "airport"
    assert loaders.class_from_filename("00012.tif") is None


def test_missing_images_are_counted_and_named(tmp_path):
    path = testing.write_karpathy(str(tmp_path), _items())
    for name in ("beach_2.jpg", "forest_3.jpg"):
        os.remove(tmp_path / "RSICD_images" / name)
    with pytest.raises(DatasetError, match=r"2 of 6 images are missing .*beach_2.jpg, forest_3.jpg"):
        loaders.load_karpathy(path)


def test_empty_caption_names_the_image(tmp_path):
    items = _items()
    items[1]["captions"][1] = "   "
    path = testing.write_karpathy(str(tmp_path), items)
    with pytest.raises(DatasetError, match=r"dataset_test.json: image 'beach_2.jpg', caption 1: empty caption"):
        loaders.load_karpathy(path)


def test_non_utf8_file_is_reported_with_position(tmp_path):
    path = tmp_path / "captions.json"
    content = b'{"images": [{"filename": "a_1.jpg", "sentences": [{"raw": "caf\xe9"}]}]}'
    path.write_bytes(content)
    assert content.index(b"\xe9") == 62  # the offset the message must give
    with pytest.raises(DatasetError, match=r"captions.json: caption file is not valid UTF-8 \(byte 62, line 1"):
        loaders.load_karpathy(str(path))


def test_unreadable_json_and_wrong_layout(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"bad.json: not valid JSON \(line 1"):
        loaders.load_karpathy(str(bad))
    bad.write_text('{"annotations": []}')
    with pytest.raises(DatasetError, match="'images' list"):
        loaders.load_karpathy(str(bad))
    with pytest.raises(DatasetError, match="caption file not found"):
        loaders.load_karpathy(str(tmp_path / "nope.json"))


def test_duplicate_file_names(tmp_path):
    items = _items()
    items[2]["filename"] = items[0]["filename"]
    path = testing.write_karpathy(str(tmp_path), items)
    with pytest.raises(DatasetError, match=r"duplicate file names: beach_1.jpg \(items 0 and 2\)"):
        loaders.load_karpathy(path)


def test_images_without_class_need_a_label_file(tmp_path):
    path = testing.write_karpathy(str(tmp_path), [{"filename": "17.tif", "captions": ["x"]}])
    with pytest.raises(DatasetError, match="1 images have no scene class.*17.tif"):
        loaders.load_karpathy(path)


def test_csv_layout_groups_captions_and_reads_labels(tmp_path):
    for name in ("a.png", "b.png"):
        testing.write_image(str(tmp_path / "images" / name))
    path = tmp_path / "captions.csv"
    path.write_text('image,caption,label\na.png,"a lake, calm",water\na.png,blue water,water\n'
                    'b.png,green fields,farmland\n')
    dataset = loaders.load_csv(str(path))
    assert dataset.filenames == ("a.png", "b.png")
    assert dataset.captions == (("a lake, calm", "blue water"), ("green fields",))
    assert dataset.class_names == ("farmland", "water") and dataset.labels.tolist() == [1, 0]


def test_csv_errors_name_the_line(tmp_path):
    testing.write_image(str(tmp_path / "images" / "a.png"))
    path = tmp_path / "captions.csv"
    path.write_text("image,caption,label\na.png,,water\n")
    with pytest.raises(DatasetError, match=r"captions.csv, line 2: image 'a.png': empty caption"):
        loaders.load_csv(str(path))
    path.write_text("img,text\n")
    with pytest.raises(DatasetError, match="header must be"):
        loaders.load_csv(str(path))
    path.write_text("image,caption,label\na.png,x,water\na.png,y,forest\n")
    with pytest.raises(DatasetError, match="two labels"):
        loaders.load_csv(str(path))


def test_load_dataset_finds_caption_file_and_image_folder(tmp_path):
    testing.write_karpathy(str(tmp_path), _items(), image_dir_name="imgs")
    config = config_lib.DataConfig(dataset="ucm", data_dir=str(tmp_path))
    dataset = loaders.load_dataset(config)
    assert dataset.name == "ucm" and len(dataset) == 6
    with pytest.raises(DatasetError, match="needs data_dir"):
        loaders.load_dataset(config_lib.DataConfig(dataset="rsicd"))


def test_fingerprint_changes_with_content(tmp_path):
    path = testing.write_karpathy(str(tmp_path), _items())
    first = loaders.load_karpathy(path).fingerprint()
    assert first == loaders.load_karpathy(path).fingerprint()
    items = _items()
    items[0]["captions"][0] = "another caption"
    testing.write_karpathy(str(tmp_path), items, make_images=False)
    assert loaders.load_karpathy(path).fingerprint() != first


@pytest.mark.skipif(not testing.has_shared_rsicd(), reason=testing.NO_SHARED_REASON)
def test_shared_rsicd_aid_loads_as_documented():
    dataset = loaders.load_dataset(config_lib.DataConfig(dataset="rsicd", data_dir=testing.SHARED_RSICD))
    assert len(dataset) == 10000 and dataset.num_captions == 50000 and dataset.num_classes == 30
    assert dataset.filenames[0] == "airport_1.jpg" and dataset.class_names[0] == "airport"
