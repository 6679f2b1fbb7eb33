"""A tiny learnable feature store and its configs, for the training tests (DUCH, CHNR,
the run-folder faults and the `rs-hashing train` command)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from rs_hashing import config as config_lib
from rs_hashing.data import loaders
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.training import callbacks
from tests import testing

CLASSES = ("beach", "forest", "harbor", "meadow")
IMAGE_DIM, TEXT_DIM = 12, 10


def make_store(root, per_class: int = 24, seed: int = 0) -> tuple[config_lib.DataConfig, str]:
    """A dataset of 4 classes whose image and text features are noisy views of a
    class centroid through two different random projections: learnable, not trivial.
    Returns its data config and the store's folder."""
    rng = np.random.default_rng(seed)
    items = [{"filename": f"{c}_{i}.jpg", "captions": [f"{c} {i} one", f"{c} {i} two"]}
             for c in CLASSES for i in range(per_class)]
    caption_file = testing.write_karpathy(str(root), items, make_images=False)
    os.makedirs(root / "RSICD_images", exist_ok=True)
    data = config_lib.DataConfig(dataset="karpathy", caption_file=caption_file, image_dir=str(root / "RSICD_images"))
    dataset = loaders.load_dataset(data, check_images=False)
    centroids = rng.normal(size=(len(CLASSES), 8))
    to_image, to_text = rng.normal(size=(8, IMAGE_DIM)), rng.normal(size=(8, TEXT_DIM))
    latent = centroids[dataset.labels] + 0.6 * rng.normal(size=(len(dataset), 8))
    caption_latent = np.repeat(latent, 2, axis=0) + 0.3 * rng.normal(size=(2 * len(dataset), 8))
    arrays = {"image": latent @ to_image, "image_aug": (latent + 0.1) @ to_image,
              "text": caption_latent @ to_text, "text_aug": (caption_latent - 0.1) @ to_text}
    FeatureStore.write(str(root / "features"), arrays, dataset, {})
    return data, str(root / "features")


def make_image_archive(root, per_class: int = 8, seed: int = 0) -> config_lib.DataConfig:
    """A caption archive of real 16 x 16 px images (4 classes, a base colour each plus
    texture, 2 captions per image) for tests that run the tiny encoders on pixels (tower
    mode: extraction, training, raw-input parity). Returns its data config."""
    rng = np.random.default_rng(seed)
    items = [{"filename": f"{c}_{i}.jpg", "captions": [f"a {c} near many green trees {i}", f"the {c} is near a road"]}
             for c in CLASSES for i in range(per_class)]
    caption_file = testing.write_karpathy(str(root), items)
    for number, item in enumerate(items):
        base = (40, 100, 160, 220)[number // per_class]
        pixels = np.clip(base + rng.normal(0, 40, size=(16, 16, 3)), 0, 255).astype(np.uint8)
        testing.Image.fromarray(pixels).save(os.path.join(root, "RSICD_images", item["filename"]))
    return config_lib.DataConfig(dataset="karpathy", caption_file=caption_file, image_dir=str(root / "RSICD_images"))


def tower_config(data: config_lib.DataConfig, root, stages: int = 1, layers: int = 1, **overrides) -> config_lib.Config:
    """tests/testing.py's tiny config (tiny_cnn, tiny_bert) on `data` with trainable tops
    (`stages` image stages, `layers` text layers), its store and run folder under `root`."""
    # tuned_epochs=0: the tops train from the first epoch (one stage; tests of two stages set it).
    config = testing.tiny_config(**{"image_trainable_stages": stages, "text_trainable_layers": layers, "tuned_epochs": 0,
                                    "features": str(root / "store"), "run_dir": str(root / "run"), **overrides})
    return dataclasses.replace(config, data=data)


def store_config(data: config_lib.DataConfig, features: str, workdir: str, **overrides) -> config_lib.Config:
    """tests/testing.py's tiny config on the store (`overrides` as config flags)."""
    config = testing.tiny_config(**overrides)
    return config_lib.Config(data=data, features=config_lib.FeatureConfig(features=features),
                             model=config.model,
                             train=config_lib.apply_overrides(config, {"run_dir": workdir}).train)


class Killed(Exception):
    """Stands for the process being killed (a run folder is then left as it was)."""


def kill_after_checkpoint(monkeypatch, number: int) -> None:
    """Makes training stop, as if killed, right after it saved checkpoint `number`."""
    original = callbacks.EpochCheckpoint.on_epoch_end

    def save_then_die(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.number_offset + epoch + 1 == number:
            monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", original)
            raise Killed(number)

    monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", save_then_die)


class FakeStore:
    """A stand-in for a FeatureStore whose values encode their own row: image i -> [i],
    caption c -> [c]."""

    def __init__(self, captions_per_image):
        counts = np.asarray(captions_per_image)
        self.caption_offsets = np.concatenate([[0], np.cumsum(counts)])
        n, m = len(counts), int(counts.sum())
        self.image = np.arange(n, dtype=np.float32)[:, None]
        self.image_aug = self.image + 0.5
        self.text = np.arange(m, dtype=np.float32)[:, None]
        self.text_aug = self.text + 0.5
        self.labels = np.arange(n) % 2


def fake_split(n: int, choice) -> ProtocolSplit:
    """Even images train, odd ones are queries or database; `choice` the caption picks."""
    return ProtocolSplit(train=np.arange(0, n, 2), query=np.arange(1, n, 4), database=np.arange(3, n, 4),
                         caption_choice=np.asarray(choice))
