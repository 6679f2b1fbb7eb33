"""A tiny finished run folder (tests/testing.py's TINY sizes, tiny_cnn + tiny_bert
encoders, untrained seeded heads) and image folders, for the export, index and search
tests. No training: exporting, indexing and searching need a run folder, not a good one.
"""

from __future__ import annotations

import os

import keras
import numpy as np
from PIL import Image

from rs_hashing import config as config_lib
from rs_hashing.atomic_files import write_json_atomic
from rs_hashing.encoders.encoder_towers import EncoderTowers
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from rs_hashing.encoders.text_encoder import TextEncoder
from rs_hashing.encoders.tiny_cnn import TinyCNN
from rs_hashing.hashing_model import HashingModel
from tests import testing

BITS = testing.TINY["bits"]
IMAGE_SIZE = testing.TINY["image_size"]
SEQUENCE_LENGTH = testing.TINY["sequence_length"]
FEATURE_DIM = 16  # TinyCNN's default width and TextEncoder.tiny's hidden size.
CAPTIONS = ("many green trees are near the river .", "two planes on the airport",
            "a large white building beside a road", "some boats are in the sea .")


def make_tiny_run(workdir: str, seed: int = 0, saved_encoders: bool = False, towers: tuple[int, int] = (0, 0)) -> str:
    """Writes config.json, model_config.json and model.weights.h5 into `workdir`.

    With `saved_encoders` the tiny CNN's weights and the tiny BERT preset are saved under
    `workdir/encoders` and config.json names them, so that the run can be rebuilt exactly
    (an export refuses the smoke preset's random, unsaved encoders); otherwise the
    encoders are the config's seeded random ones, which is all indexing needs.

    `towers` = (image stages, text layers) above 0 makes a run that fine-tuned the tops
    of its encoders (tower mode): the tops start from the encoders' weights and are moved
    away from them by seeded noise, as training would, so that codes through pretrained
    and through tuned tops differ.
    """
    keras.utils.set_random_seed(seed)
    os.makedirs(workdir, exist_ok=True)
    overrides = {"train.seed": seed, "run_dir": workdir}
    if saved_encoders:
        encoders = os.path.join(workdir, "encoders")
        os.makedirs(encoders, exist_ok=True)
        image_weights = os.path.join(encoders, "tiny_cnn.weights.h5")
        TinyCNN(feature_dim=FEATURE_DIM, image_size=IMAGE_SIZE).save_weights(image_weights)
        text_dir = os.path.join(encoders, "tiny_bert")
        TextEncoder.tiny(sequence_length=SEQUENCE_LENGTH, directory=text_dir)
        overrides.update({"image_encoder": "tiny_cnn", "image_weights": image_weights, "text_encoder": text_dir,
                          "image_size": IMAGE_SIZE, "sequence_length": SEQUENCE_LENGTH})
    overrides.update({"image_trainable_stages": towers[0], "text_trainable_layers": towers[1]})
    config = testing.tiny_config(**overrides)
    image_tower, text_tower = _tuned_tops(config, seed) if any(towers) else (None, None)
    model = CrossModalHashingModel(FEATURE_DIM, FEATURE_DIM, BITS, testing.TINY["hidden_dim"],
                                   num_train=4, seed=seed, image_tower=image_tower, text_tower=text_tower)
    if saved_encoders:
        # Untrained heads give codes near 0; a larger last layer moves them away, so that
        # the parity tests compare graphs, not float noise at the sign boundary.
        for head in (model.image_head, model.text_head):
            kernel = head.get_layer("code_dense").kernel
            kernel.assign(kernel * 20.0)
    config_lib.save_config(config, workdir)
    model.save_weights(os.path.join(workdir, "model.weights.h5"))
    write_json_atomic(os.path.join(workdir, "model_config.json"), model.get_config())
    return workdir


def _tuned_tops(config: config_lib.Config, seed: int):
    """The config's encoder tops with their pretrained weights moved by seeded noise."""
    rng = np.random.default_rng(seed)
    towers = EncoderTowers.of_config(config)
    tops = towers.image_top(), towers.text_top()
    for top in tops:
        for variable in [] if top is None else top.trainable_variables:
            value = np.asarray(variable)
            variable.assign(value + 0.5 * (value.std() + 0.01) * rng.normal(size=value.shape).astype(value.dtype))
    return tops


def tiny_model(root: str) -> HashingModel:
    """The HashingModel of a tiny run with saved encoders, made in `root`."""
    return HashingModel.from_run(make_tiny_run(root, saved_encoders=True))


def tuned_tower_model(root: str, towers: tuple[int, int] = (1, 1)) -> HashingModel:
    """The HashingModel of a tiny run with saved encoders whose tops were fine-tuned
    (tiny_cnn's last convolution and tiny_bert's last layer by default), made in `root`."""
    return HashingModel.from_run(make_tiny_run(root, saved_encoders=True, towers=towers))


def write_images(root: str, count: int = 4, seed: int = 0) -> list[str]:
    """Random-texture JPEG and PNG images of several sizes (not square, not S x S);
    returns their paths."""
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


def write_tile_folder(folder: str, count: int, seed: int = 0, size: int = 20) -> list[str]:
    """`count` distinct random-texture PNG tiles, every third one in a subfolder (an
    archive folder to index); returns their paths relative to `folder`, sorted."""
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
