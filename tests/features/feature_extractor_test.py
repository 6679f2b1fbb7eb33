import os

import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.data import loaders
from rs_hashing.data.image_augmenter import ImageAugmenter
from rs_hashing.errors import DatasetError
from rs_hashing.features.feature_extractor import FeatureExtractor
from rs_hashing.features.image_pipeline import load_image, load_pixels, reduce_image, resize_image
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


# ----------------------------------------------------------------- hostile and odd images

def _recording_extractor(seen, **kwargs):
    """An extractor whose augmenter records the arrays it is given (and flips them)."""
    def augment(image, index):
        seen[int(index)] = image.copy()
        return image[::-1].copy()

    encoder = build_image_encoder("tiny_cnn", weights=None, image_size=16)
    return FeatureExtractor(encoder, TextEncoder.tiny(sequence_length=8), 16, augment,
                            lambda caption, i: caption, batch_size=4, shard_size=4, progress=False, **kwargs)


def _sized_dataset(root, sizes):
    """One textured PNG per (height, width); returns the dataset."""
    items = [{"filename": f"scene_{i}.png", "captions": ["a scene"]} for i in range(len(sizes))]
    path = testing.write_karpathy(str(root), items, make_images=False)
    rng = np.random.default_rng(1)
    for item, (height, width) in zip(items, sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        os.makedirs(os.path.join(root, "RSICD_images"), exist_ok=True)
        testing.Image.fromarray(pixels).save(os.path.join(root, "RSICD_images", item["filename"]))
    return loaders.load_karpathy(path)


def test_images_at_or_under_4s2_reach_the_augmenter_and_encoder_unchanged(tmp_path):
    # S = 16: 4 S^2 = 1024 px. 32 x 32 (1024 px) and smaller are not reduced.
    dataset = _sized_dataset(tmp_path / "data", [(32, 32), (16, 16), (20, 50), (7, 9)])
    seen = {}
    extractor = _recording_extractor(seen)
    store = extractor.extract(dataset, str(tmp_path / "store"), {})
    for i in range(4):
        pixels = np.asarray(testing.Image.open(dataset.image_path(i)).convert("RGB"))
        np.testing.assert_array_equal(seen[i], pixels)
        direct = tf.clip_by_value(tf.image.resize(tf.cast(pixels, tf.float32), (16, 16), antialias=True), 0, 255)
        np.testing.assert_array_equal(resize_image(tf.constant(pixels), 16), direct)
    np.testing.assert_allclose(store.image[[0]], extractor.image_encoder(
        tf.stack([load_image(tf.constant(dataset.image_path(0)), 16)]), training=False), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not testing.has_shared_rsicd(), reason=testing.NO_SHARED_REASON)
def test_rsicd_augmented_views_are_those_of_the_augmenter_on_the_decoded_image():
    # RSICD's 150 px images at S = 224 (22,500 px <= 200,704): the augmenter sees the
    # decoded pixels themselves, so its views are the ones it always gave.
    augmenter = ImageAugmenter(seed=0)
    sample = testing.rsicd_sample(6)
    for index, path in enumerate(sample.paths):
        pixels = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        reduced = reduce_image(load_pixels(tf.constant(path)), 224)
        np.testing.assert_array_equal(reduced, pixels)
        np.testing.assert_array_equal(augmenter.augment(reduced.numpy(), index),
                                      augmenter.augment(pixels.numpy(), index))


def test_large_images_are_reduced_in_uint8_before_the_augmenter(tmp_path):
    dataset = _sized_dataset(tmp_path / "data", [(300, 200), (40, 4000)])
    seen = {}
    extractor = _recording_extractor(seen)
    store = extractor.extract(dataset, str(tmp_path / "store"), {})
    # 300 x 200: scale sqrt(1024 / 60000) = 0.1306, 39 x 26 (1014 px); 40 x 4000: scale
    # 0.08, 3 x 320 (960 px).
    assert seen[0].shape == (39, 26, 3) and seen[1].shape == (3, 320, 3)
    assert all(image.dtype == np.uint8 and image.shape[0] * image.shape[1] <= 1024 for image in seen.values())
    # The original view is what load_image (every other command's reader) gives.
    direct = extractor.image_encoder(tf.stack([load_image(tf.constant(dataset.image_path(i)), 16)
                                                              for i in range(2)]), training=False)
    np.testing.assert_allclose(store.image, direct, rtol=1e-5, atol=1e-6)


def test_an_image_too_small_for_the_augmenter_is_named(tmp_path):
    dataset = _sized_dataset(tmp_path / "data", [(16, 16), (2, 2), (16, 16)])
    encoder = build_image_encoder("tiny_cnn", weights=None, image_size=16)
    extractor = FeatureExtractor(encoder, TextEncoder.tiny(sequence_length=8), 16, ImageAugmenter().augment,
                                 lambda caption, i: caption, batch_size=4, progress=False)
    with pytest.raises(DatasetError, match=r"1 image cannot be used:\n  .*scene_1.png: the image augmenter cannot "
                                           r"use this 2 x 2 px image \(ValueError: .*too small\)$"):
        extractor.extract(dataset, str(tmp_path / "store"), {})


def test_images_above_max_pixels_are_refused_by_name(tmp_path):
    dataset = _sized_dataset(tmp_path / "data", [(16, 16), (30, 40), (16, 16), (50, 21)])
    with pytest.raises(DatasetError, match=r"2 image\(s\) cannot be decoded:\n  .*scene_1.png: 40 x 30 px is above "
                                           r"the limit of 1,000 px for one image\n  .*scene_3.png: 21 x 50 px"):
        _recording_extractor({}, max_pixels=1000).extract(dataset, str(tmp_path / "store"), {})
    with pytest.raises(ValueError, match="max_pixels=0 must be a positive integer or None"):
        _recording_extractor({}, max_pixels=0)


def test_other_formats_are_refused_by_name(tmp_path):
    dataset = _dataset(tmp_path / "data")
    testing.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(dataset.image_path(3), format="WEBP")
    with pytest.raises(DatasetError, match=r"1 image\(s\) cannot be decoded:\n  .*beach_3.jpg: not a readable "
                                           r"JPEG, PNG, GIF or BMP image \(WEBP\)"):
        _extractor().extract(dataset, str(tmp_path / "store"), {})


# ----------------------------------------------------------------------- activations for trainable tops


class _Towers:
    """The tiny encoders cut before tiny_cnn's last convolution and tiny_bert's last layer."""

    def __init__(self):
        from rs_hashing.encoders.encoder_towers import EncoderTowers  # pylint: disable=import-outside-toplevel
        from rs_hashing.encoders.frozen_encoders import FrozenEncoders  # pylint: disable=import-outside-toplevel

        self.towers = EncoderTowers(FrozenEncoders(testing.tiny_config().features), 1, 1)
        self.calls = 0

    def encode(self, texts, batch_size):
        self.calls += 1
        return self.towers.encode_text_states(texts, batch_size)


TOWERS_INFO = {"towers": {"image_trainable_stages": 1, "text_trainable_layers": 1, "dtype": "float16",
                          "image_dim": 16, "text_dim": 16}}


def _tower_extractor(text_encoder, batch_size=4, shard_size=4):
    return FeatureExtractor(text_encoder.towers.image_bottom, text_encoder, 16, lambda image, i: image[::-1].copy(),
                            lambda caption, i: caption + " indeed", batch_size=batch_size, shard_size=shard_size,
                            progress=False, dtype="float16")


def test_activations_are_cached_in_float16_with_masks_trimmed_to_the_longest_caption(tmp_path):
    dataset = _dataset(tmp_path / "data")
    text_encoder = _Towers()
    store = _tower_extractor(text_encoder).extract(dataset, str(tmp_path / "store"), TOWERS_INFO)
    towers = text_encoder.towers
    assert store.image.dtype == np.float16 and store.image.shape == (10, 8, 8, 8)
    pixels = tf.stack([load_image(tf.constant(dataset.image_path(i)), 16) for i in (0, 7)])
    np.testing.assert_allclose(store.image[[0, 7]], towers.image_bottom(pixels), rtol=2e-3, atol=1e-3)
    # "a forest near water indeed": [CLS] + 5 word pieces + [SEP] is the longest of 7 tokens.
    texts, _ = dataset.flat_captions()
    assert store.text.shape == (20, 7, 16) and store.text_mask.shape == (20, 7)
    direct = towers.encode_text_states(texts)
    np.testing.assert_array_equal(store.text_mask, direct["padding_mask"][:, :7])
    np.testing.assert_allclose(store.text, direct["states"][:, :7], rtol=2e-3, atol=1e-3)
    augmented = towers.encode_text_states([text + " indeed" for text in texts])
    np.testing.assert_array_equal(store.text_aug_mask, augmented["padding_mask"][:, :7])
    assert store.towers["text_shape"] == [7, 16] and store.towers["image_shape"] == [8, 8, 8]


def test_a_killed_extraction_of_token_states_resumes_with_their_masks(tmp_path):
    dataset = _dataset(tmp_path / "data")
    text_encoder = _Towers()
    original = text_encoder.encode

    def dies_on_second_chunk(texts, batch_size):
        if text_encoder.calls == 1:
            raise KeyboardInterrupt("killed")
        return original(texts, batch_size)

    # Shards of one image and chunks of 4 captions: the 8 unique captions take 2 chunks.
    text_encoder.encode = dies_on_second_chunk
    with pytest.raises(KeyboardInterrupt):
        _tower_extractor(text_encoder, 1, 1).extract(dataset, str(tmp_path / "store"), TOWERS_INFO)
    shards = sorted(os.listdir(tmp_path / "store" / "shards"))
    assert "text_00000.npy" in shards and "text_mask_00000.npy" in shards and "text_00001.npy" not in shards
    text_encoder.encode = original
    store = _tower_extractor(text_encoder, 1, 1).extract(dataset, str(tmp_path / "store"), TOWERS_INFO)
    assert text_encoder.calls == 2  # the first chunk was not encoded again
    fresh = _tower_extractor(_Towers()).extract(dataset, str(tmp_path / "fresh"), TOWERS_INFO)
    np.testing.assert_array_equal(store.text_mask, fresh.text_mask)
    np.testing.assert_allclose(store.text_aug, fresh.text_aug, atol=1e-3)


def test_activations_without_their_cut_are_not_written_as_features(tmp_path):
    dataset = _dataset(tmp_path / "data")
    with pytest.raises(ValueError, match=r"arrays of per-item activations need info\['towers'\]"):
        _tower_extractor(_Towers()).extract(dataset, str(tmp_path / "store"), {})
