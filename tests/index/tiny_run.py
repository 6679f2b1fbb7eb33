"""A tiny finished run (tiny_cnn + tiny_bert encoders, 8-bit heads) and image folders,
for the archive indexing and search tests. No training: the heads keep their seeded
initial weights, which is all that indexing and searching need."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from rs_hashing import config as config_lib
from rs_hashing.features.feature_store import write_json_atomic
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from tests import testing

# tiny_cnn's and tiny_bert's feature widths.
IMAGE_DIM = 16
TEXT_DIM = 16


def make_tiny_run(workdir: str, seed: int = 0) -> str:
    """Writes config.json, model_config.json and model.weights.h5 into `workdir`."""
    config = testing.tiny_config(**{"train.seed": seed, "workdir": workdir})
    model = CrossModalHashingModel(image_dim=IMAGE_DIM, text_dim=TEXT_DIM,
                                   bits=config.model.bits, hidden_dim=config.model.hidden_dim,
                                   num_train=4, seed=seed)
    os.makedirs(workdir, exist_ok=True)
    config_lib.save_config(config, workdir)
    model.save_weights(os.path.join(workdir, "model.weights.h5"))
    write_json_atomic(os.path.join(workdir, "model_config.json"), model.get_config())
    return workdir


def write_images(folder: str, count: int, seed: int = 0, size: int = 20) -> list[str]:
    """`count` distinct random-texture PNGs, every third one in a subfolder; returns
    their paths relative to `folder`, sorted."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        name = os.path.join("sub", f"tile_{i:02d}.png") if i % 3 == 2 else f"tile_{i:02d}.png"
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # A random base colour plus texture, so the tiny CNN sees different inputs.
        base = rng.integers(0, 256, size=3)
        pixels = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
        names.append(name)
    return sorted(names)
