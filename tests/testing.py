"""Shared helpers for the test suite: tiny configs, fixture archives, shared-data paths."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from rs_hashing import config as config_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_RSICD = os.environ.get(
    "RS_HASHING_RSICD", os.path.join(REPO_ROOT, "..", "shared", "data", "rsicd"))
NO_SHARED_REASON = (f"RSICD-AID benchmark data not found at {SHARED_RSICD} "
                    "(only present on the project's own machines)")

# Sizes from STYLE.md: small enough that every unit test runs in seconds on a CPU.
TINY = dict(bits=8, hidden_dim=16, image_size=16, vocabulary_size=50, sequence_length=8, batch_size=4)


def has_shared_rsicd() -> bool:
    return os.path.isfile(os.path.join(SHARED_RSICD, "dataset_rsicd.json"))


def rsicd_sample(count: int, offset: float = 0.0):
    """`count` RSICD-AID images with a caption each (exports are measured on them)."""
    from rs_hashing.export.image_sample import ImageSample  # pylint: disable=import-outside-toplevel

    data = config_lib.DataConfig(dataset="rsicd", data_dir=SHARED_RSICD)
    return ImageSample.from_dataset(data, count, offset, name="RSICD-AID")


def tiny_config(**overrides) -> config_lib.Config:
    base = config_lib.apply_overrides(config_lib.get_preset("smoke"), {
        "bits": TINY["bits"], "hidden_dim": TINY["hidden_dim"], "image_size": TINY["image_size"],
        "sequence_length": TINY["sequence_length"], "train.batch_size": TINY["batch_size"]})
    return config_lib.apply_overrides(base, overrides)


def write_image(path: str, color=(10, 200, 30), size: int = 16) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size, 3), color, dtype=np.uint8)).save(path)


def write_karpathy(root: str, items: list[dict], image_dir_name: str = "RSICD_images",
                   make_images: bool = True, name: str = "dataset_test.json") -> str:
    """Writes a Karpathy caption file; items are {filename, captions[, extra fields]}."""
    images = []
    for i, item in enumerate(items):
        entry = {k: v for k, v in item.items() if k != "captions"}
        entry.update({"imgid": i, "split": "train",
                      "sentences": [{"raw": c, "tokens": c.split()} for c in item["captions"]]})
        images.append(entry)
        if make_images:
            write_image(os.path.join(root, image_dir_name, item["filename"]))
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"dataset": "test", "images": images}, f)
    return path


def run_module(module: str, *args: str, timeout: int = 600, env: dict | None = None):
    """Runs `python -m module args...` from the repository root, as a user would, and
    returns the CompletedProcess (text output captured). TensorFlow's C++ start-up
    logging is left to the command, which keeps it quiet by itself."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
