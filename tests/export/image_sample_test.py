"""Tests for rs_hashing.export.image_sample."""

import os

import pytest

from rs_hashing import config as config_lib
from rs_hashing.export.image_sample import ImageSample
from tests import testing
from tests import tiny_run


def test_from_dataset_spreads_two_disjoint_samples(tmp_path):
    items = [{"filename": f"beach_{i}.jpg", "captions": [f"caption {i} a", f"caption {i} b"]} for i in range(10)]
    caption_file = testing.write_karpathy(str(tmp_path), items, make_images=False)
    os.makedirs(tmp_path / "RSICD_images")
    data = config_lib.DataConfig(dataset="karpathy", caption_file=caption_file)
    first = ImageSample.from_dataset(data, 4)
    second = ImageSample.from_dataset(data, 4, offset=0.5, name="test set")
    # n = 10, count = 4: picks int((i + offset) * 2.5).
    assert [os.path.basename(p) for p in first.paths] == ["beach_0.jpg", "beach_2.jpg", "beach_5.jpg", "beach_7.jpg"]
    assert first.captions == ("caption 0 a", "caption 2 a", "caption 5 a", "caption 7 a")
    assert [os.path.basename(p) for p in second.paths] == ["beach_1.jpg", "beach_3.jpg", "beach_6.jpg", "beach_8.jpg"]
    assert second.source.startswith("test set: 4 images")
    assert len(ImageSample.from_dataset(data, 50).paths) == 10
    with pytest.raises(ValueError, match="offset=1.0 in"):
        ImageSample.from_dataset(data, 4, offset=1.0)


def test_from_files_expands_folders_and_checks_captions(tmp_path):
    paths = tiny_run.write_images(str(tmp_path / "images"), count=3)
    sample = ImageSample.from_files([str(tmp_path / "images")])
    assert sample.paths == tuple(sorted(paths)) and sample.captions == ()
    with pytest.raises(ValueError, match="3 images but 1 captions"):
        ImageSample(tuple(paths), ("one",))


@pytest.mark.skipif(not testing.has_shared_rsicd(), reason=testing.NO_SHARED_REASON)
def test_rsicd_aid_sample_has_files_and_captions():
    sample = testing.rsicd_sample(20)
    assert len(sample.paths) == len(sample.captions) == 20 and sample.source.startswith("RSICD-AID")
    assert all(os.path.isfile(p) for p in sample.paths)
    assert not set(sample.paths) & set(testing.rsicd_sample(20, offset=0.5).paths)
