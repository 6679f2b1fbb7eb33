"""A tiny finished run folder for the export tests (tests/testing.py's TINY sizes).

The smoke preset's encoders are random and unsaved, which an export refuses; here the
tiny CNN's weights are saved to a file and the tiny BERT to a preset folder, and the
run's config.json names them, so the run can be rebuilt exactly.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
from PIL import Image

from rs_hashing import config as config_lib
from rs_hashing.export.hashing_encoders import HashingEncoders
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from rs_hashing.models.text_encoder import TextEncoder
from rs_hashing.models.tiny_cnn import TinyCNN
from tests import testing

BITS = testing.TINY["bits"]
IMAGE_SIZE = testing.TINY["image_size"]
SEQUENCE_LENGTH = testing.TINY["sequence_length"]
FEATURE_DIM = 16  # TinyCNN's default width and TextEncoder.tiny's hidden size.
CAPTIONS = ("many green trees are near the river .", "two planes on the airport",
            "a large white building beside a road", "some boats are in the sea .")


def make_tiny_run(root: str, seed: int = 0) -> str:
    """Writes encoder weights and a run folder under `root`; returns the run folder."""
    keras.utils.set_random_seed(seed)
    os.makedirs(root, exist_ok=True)
    image_weights = os.path.join(root, "tiny_cnn.weights.h5")
    TinyCNN(feature_dim=FEATURE_DIM, image_size=IMAGE_SIZE).save_weights(image_weights)
    text_dir = os.path.join(root, "tiny_bert")
    TextEncoder.tiny(sequence_length=SEQUENCE_LENGTH, directory=text_dir)
    config = testing.tiny_config(**{
        "image_encoder": "tiny_cnn", "image_weights": image_weights, "text_encoder": text_dir,
        "image_size": IMAGE_SIZE, "sequence_length": SEQUENCE_LENGTH})
    model = CrossModalHashingModel(FEATURE_DIM, FEATURE_DIM, BITS, testing.TINY["hidden_dim"],
                                   num_train=4, seed=seed)
    # Untrained heads give codes near 0; a larger last layer moves them away, so that
    # the parity tests compare graphs, not float noise at the sign boundary.
    for head in (model.image_head, model.text_head):
        kernel = head.get_layer("code_dense").kernel
        kernel.assign(kernel * 20.0)
    workdir = os.path.join(root, "run")
    config_lib.save_config(config, workdir)
    model.save_weights(os.path.join(workdir, "model.weights.h5"))
    with open(os.path.join(workdir, "model_config.json"), "w", encoding="utf-8") as f:
        json.dump(model.get_config(), f)
    return workdir


def tiny_encoders(root: str) -> HashingEncoders:
    return HashingEncoders.from_workdir(make_tiny_run(root))


def write_images(root: str, count: int = 4, seed: int = 0) -> list[str]:
    """Random-texture JPEG and PNG images of several sizes (not square, not S x S)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(count):
        height, width = 12 + 7 * i, 20 + 3 * i
        smooth = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3)).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(smooth).resize((width, height), Image.Resampling.BICUBIC))
        path = os.path.join(root, f"image_{i}.{'jpg' if i % 2 == 0 else 'png'}")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths
