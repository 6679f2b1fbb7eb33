import os

import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.data import loaders
from rs_hashing.errors import DatasetError
from rs_hashing.features.feature_extractor import FeatureExtractor
from rs_hashing.features.image_pipeline import load_image
from rs_hashing.encoders.image_encoder import build_image_encoder
from rs_hashing.encoders.text_encoder import TextEncoder
from tests import testing


def _dataset(root, n=5):
    items = [{"filename": f"{c}_{i}.jpg", "captions": [f"a {c} near water", f"the {c} is green"]}
             for c in ("beach", "forest") for i in range(n)]
    path = testing.write_karpathy(str(root), items)
    rng = np.random.default_rng(0)
    for item in items:  # textured images, so that the augmented view differs
        testing.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            os.path.join(root, "RSICD_images", item["filename"]))
    return loaders.load_karpathy(path)


def _extractor(**kwargs):
    encoder = build_image_encoder("tiny_cnn", weights=None, image_size=16)
    text = TextEncoder.tiny(sequence_length=8)
    return FeatureExtractor(encoder, text, 16, lambda image, i: image[::-1].copy(),
                            lambda caption, i: caption + " indeed", batch_size=4, shard_size=4,
                            progress=False, **kwargs)


def test_extracts_every_view_in_item_order(tmp_path):
    dataset = _dataset(tmp_path / "data")
    extractor = _extractor()
    store = extractor.extract(dataset, str(tmp_path / "store"), {"image_encoder": "tiny_cnn"})
    assert store.image.shape[0] == 10 and store.text.shape[0] == 20
    direct = extractor.image_encoder(tf.stack([load_image(tf.constant(dataset.image_path(i)), 16)
                                               for i in (0, 7)]), training=False).numpy()
    np.testing.assert_allclose(store.image[[0, 7]], direct, rtol=1e-5, atol=1e-6)
    assert not np.allclose(store.image, store.image_aug)  # the flipped view really went in
    text_direct = extractor.text_encoder.encode(["the forest is green"])
    np.testing.assert_allclose(store.text[dataset.caption_offsets()[5] + 1], text_direct[0], rtol=1e-4, atol=1e-5)
    assert not os.path.exists(tmp_path / "store" / "shards")
    assert store.manifest["augmented_caption_changed_fraction"] == 1.0


def test_killed_extraction_resumes_without_redoing_finished_shards(tmp_path):
    dataset = _dataset(tmp_path / "data")
    extractor = _extractor()
    calls = []
    original = extractor._image_shard

    def dies_on_third_shard(ds, start, stop):
        calls.append(start)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(ds, start, stop)

    extractor._image_shard = dies_on_third_shard
    with pytest.raises(KeyboardInterrupt):
        extractor.extract(dataset, str(tmp_path / "store"), {})
    assert sorted(os.listdir(tmp_path / "store" / "shards")) == [
        "image_00000.npy", "image_00001.npy", "image_aug_00000.npy", "image_aug_00001.npy", "resume_key.json"]
    calls.clear()
    extractor._image_shard = lambda ds, start, stop: calls.append(start) or original(ds, start, stop)
    store = extractor.extract(dataset, str(tmp_path / "store"), {})
    assert calls == [8]  # only the unfinished shard (items 8-9) is computed again
    assert extractor.report.shards_reused == 2 and store.num_images == 10
    extractor._image_shard = original
    fresh = extractor.extract(dataset, str(tmp_path / "fresh"), {})  # same encoders, uninterrupted
    np.testing.assert_allclose(store.image, fresh.image, rtol=1e-5, atol=1e-6)


def test_shards_of_another_extraction_are_refused(tmp_path):
    dataset = _dataset(tmp_path / "data")
    os.makedirs(tmp_path / "store" / "shards")
    (tmp_path / "store" / "shards" / "resume_key.json").write_text('{"fingerprint": "other", "info": {}}')
    with pytest.raises(DatasetError, match="holds shards of another extraction"):
        _extractor().extract(dataset, str(tmp_path / "store"), {})


def test_corrupt_images_are_reported_by_name(tmp_path):
    dataset = _dataset(tmp_path / "data")
    with open(dataset.image_path(6), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DatasetError, match=r"1 image\(s\) cannot be decoded:\n  .*forest_1.jpg: "):
        _extractor().extract(dataset, str(tmp_path / "store"), {})
