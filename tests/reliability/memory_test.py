"""Bounded memory for any image: a 12000 x 12000 px PNG (a 2 MB file, 432 MB of uint8
pixels, 1.7 GB as float32) is refused from its header by feature extraction and by the
SavedModel's encode_image, and, under a raised limit, extracted through the uint8 area
reduction. Each case runs in a fresh process whose peak resident memory is compared
with its peak before the image was touched (VmHWM: a child's ru_maxrss would start at
this test runner's size).
"""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import image_memory_benchmark as benchmark
from rs_hashing.features import image_pipeline
from tests import testing

MIB = 1024 ** 2
SIDE = 12000  # 144 Mpx: above the default 50 Mpx limit


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    return {"big": benchmark.write_dataset(str(root / "big"), 4, SIDE)}


def test_the_big_png_is_small_on_disk(datasets):
    path = os.path.join(os.path.dirname(datasets["big"]), "images", benchmark.BIG_IMAGE)
    assert os.path.getsize(path) < 4 * MIB
    with open(path, "rb") as f:
        assert f.read(24)[16:24] == SIDE.to_bytes(4, "big") * 2  # IHDR width, height


def test_extraction_refuses_it_from_its_header(datasets, tmp_path):
    result = benchmark.run_child(datasets["big"], str(tmp_path / "store"), 64, None)
    assert result["error"] is not None and result["error"].startswith("1 image(s) cannot be decoded:\n  ")
    assert result["error"].endswith(f"{benchmark.BIG_IMAGE}: 12000 x 12000 px is above the limit of "
                                    f"{image_pipeline.MAX_IMAGE_PIXELS:,} px for one image")
    # Never decoded: 432 MB of pixels would show.
    assert result["peak_rss_bytes"] - result["peak_rss_before_extraction_bytes"] < 200 * MIB, result


def test_extraction_under_a_raised_limit_stays_bounded(datasets, tmp_path):
    big = benchmark.run_child(datasets["big"], str(tmp_path / "big"), 64, 150_000_000)
    assert big["error"] is None and big["images"] == 5
    # The decoded uint8 image (432 MB) and its reduction; no float copy (1.7 GB), no
    # augmenter working on 144 Mpx (it peaked at 19.6 GB before).
    growth = big["peak_rss_bytes"] - big["peak_rss_before_extraction_bytes"]
    print(f"raised limit: peak {big['peak_rss_bytes'] / MIB:.0f} MiB, growth {growth / MIB:.0f} MiB")
    assert growth < 1024 * MIB, big
    assert big["peak_rss_bytes"] < 2 * 10 ** 9, big


_SERVE = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401
from PIL import Image
from rs_hashing.export import serving_export
from tests import tiny_run

root, big_png = sys.argv[1], sys.argv[2]
path = serving_export.export_savedmodel(tiny_run.tiny_model(os.path.join(root, "tiny")),
                                        os.path.join(root, "serving"), warmup=False)
encode_image = tf.saved_model.load(path).signatures["encode_image"]
small = tf.io.encode_png(np.zeros((20, 20, 3), np.uint8)).numpy()
encode_image(image_bytes=tf.constant([small]))  # everything built and warm
from benchmarks.image_memory_benchmark import peak_rss_bytes as peak
before = peak()
try:
    encode_image(image_bytes=tf.constant([small, open(big_png, "rb").read()]))
    error = None
except tf.errors.InvalidArgumentError as e:
    error = e.message
print(json.dumps({"before": before, "after": peak(), "error": error}))
"""


def test_encode_image_refuses_it_from_its_header(datasets, tmp_path):
    pytest.importorskip("tensorflow_text")
    big_png = os.path.join(os.path.dirname(datasets["big"]), "images", benchmark.BIG_IMAGE)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", _SERVE, str(tmp_path), big_png], cwd=testing.REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "image_bytes[1]: 12000 x 12000 px is above the limit of 50,000,000 px for one image (max_pixels)" \
        in report["error"]
    assert report["after"] - report["before"] < 100 * MIB, report  # it grew by 2.1 GB before
