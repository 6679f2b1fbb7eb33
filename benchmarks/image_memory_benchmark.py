r"""Peak memory of feature extraction with one huge image in the dataset.

    python -m benchmarks.image_memory_benchmark [--size=12000] [--images=40] \
        [--image_size=224] [--raised_max_pixels=150000000]

Writes a small Karpathy-layout dataset (`--images` 150 x 150 px textured JPEGs, as
RSICD's) into a temporary folder, plus one `--size` x `--size` px PNG (12000 x 12000 px
is a 0.4 MB file that decodes to 432 MB of uint8 pixels), streamed row by row so that
this process never holds it. Then each case runs `extract_features` on the smoke preset
(tiny_cnn random encoder, tiny BERT; `--image_size` px encoder input) in a fresh child
process, which prints its peak resident memory (VmHWM, the ru_maxrss of its own memory
map; see `peak_rss_bytes`) before and after extracting:

  1. the dataset without the big image;
  2. with it, at the default pixel limit (`image_pipeline.MAX_IMAGE_PIXELS`, 50 Mpx):
     refused from the PNG header, before decoding, with a DatasetError naming the file;
  3. with it and the limit raised to `--raised_max_pixels`: decoded (uint8), area-reduced
     to at most 4 S^2 px before the augmenter and the float resize, and extracted.

Target: at most 2 GB in every case (before the reduction, case 3 peaked at 19.6 GB).
`--child` runs one case in this process (what the parent and the memory test call).
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

BIG_IMAGE = "big_scene.png"
GIB = 1024 ** 3


def write_large_png(path: str, width: int, height: int, seed: int = 0) -> int:
    """Writes an 8-bit RGB PNG of width x height px row by row (a few MB of memory at
    most, whatever the size) and returns its size in bytes. Every 256th row is new
    texture; the rows between repeat the one above (PNG filter "Up"), so the file is
    small and decodes to the full width x height x 3 bytes."""
    rng = np.random.default_rng(seed)
    row_bytes = width * 3

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(6)
    repeat = b"\x02" + bytes(row_bytes)  # filter 2 (Up), zero differences: the row above again
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for row in range(height):
            if row % 256 == 0:
                ramp = (np.arange(row_bytes) // 3 + row // 256 * 17) % 256
                texture = (ramp + rng.integers(0, 24, row_bytes)) % 256
                data = b"\x00" + texture.astype(np.uint8).tobytes()
            else:
                data = repeat
            compressed = compressor.compress(data)
            if compressed:
                f.write(chunk(b"IDAT", compressed))
        f.write(chunk(b"IDAT", compressor.flush()) + chunk(b"IEND", b""))
    return os.path.getsize(path)


def write_dataset(root: str, images: int, big_size: int | None, seed: int = 0) -> str:
    """`images` textured 150 px JPEGs (and, with `big_size`, one big PNG) with two
    captions each, in the Karpathy layout; returns the caption file."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    names = [f"scene_{i:03d}.jpg" for i in range(images)]
    for name in names:
        coarse = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((150, 150), Image.Resampling.BICUBIC).save(os.path.join(image_dir, name))
    if big_size:
        write_large_png(os.path.join(image_dir, BIG_IMAGE), big_size, big_size, seed)
        names.append(BIG_IMAGE)
    items = [{"filename": name, "imgid": i, "split": "train", "class": "scene",
              "sentences": [{"raw": f"scene {i} with many green trees", "tokens": []},
                            {"raw": f"a road near building {i}", "tokens": []}]}
             for i, name in enumerate(names)]
    path = os.path.join(root, "captions.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"dataset": "memory_benchmark", "images": items}, f)
    return path


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM where /proc has it, else ru_maxrss.

    ru_maxrss of a child process starts at its parent's size (Linux carries the peak of
    the forked copy over exec), so a child of a 2 GB test runner would report 2 GB
    before doing anything; VmHWM belongs to the memory map exec made, and starts at 0.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB.


def extract_once(caption_file: str, out_dir: str, image_size: int, max_pixels: int | None) -> dict:
    """One case in this process: extract_features on the smoke preset (with
    `max_pixels`, the same extractor with another pixel limit); returns peak memory
    before and after, seconds and the error message (None when extraction succeeded)."""
    from rs_hashing import config as config_lib  # pylint: disable=import-outside-toplevel
    from rs_hashing.data.caption_augmenter import CaptionAugmenter  # pylint: disable=import-outside-toplevel
    from rs_hashing.data.image_augmenter import ImageAugmenter  # pylint: disable=import-outside-toplevel
    from rs_hashing.data.loaders import load_karpathy  # pylint: disable=import-outside-toplevel
    from rs_hashing.encoders.frozen_encoders import FrozenEncoders  # pylint: disable=import-outside-toplevel
    from rs_hashing.errors import DatasetError  # pylint: disable=import-outside-toplevel
    from rs_hashing.features import extraction  # pylint: disable=import-outside-toplevel
    from rs_hashing.features.feature_extractor import FeatureExtractor  # pylint: disable=import-outside-toplevel
    from rs_hashing.features.image_pipeline import radiometry_of  # pylint: disable=import-outside-toplevel

    config = config_lib.apply_overrides(config_lib.get_preset("smoke"), {"image_size": image_size})
    dataset = load_karpathy(caption_file, os.path.join(os.path.dirname(caption_file), "images"))
    encoders = FrozenEncoders(config.features, dtype_policy=config.features.precision)
    before = peak_rss_bytes()
    started = time.perf_counter()
    error = None
    try:
        if max_pixels is None:
            extraction.extract_features(config, dataset, out_dir, progress=False, encoders=encoders)
        else:  # extract_features, with another limit.
            features = config.features
            image_augmenter = ImageAugmenter(seed=features.augment_seed)
            caption_augmenter = CaptionAugmenter(seed=features.augment_seed)
            info = extraction.encoder_info(features, encoders, image_augmenter, caption_augmenter)
            FeatureExtractor(encoders.image, encoders.text, features.image_size, image_augmenter.augment,
                             caption_augmenter.augment, batch_size=features.encode_batch_size, progress=False,
                             radiometry=radiometry_of(features), max_pixels=max_pixels).extract(dataset, out_dir, info)
    except DatasetError as e:
        error = str(e)
    return {"images": len(dataset), "max_pixels": max_pixels, "error": error,
            "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_before_extraction_bytes": before, "peak_rss_bytes": peak_rss_bytes()}


def run_child(caption_file: str, out_dir: str, image_size: int, max_pixels: int | None,
              timeout: int = 900) -> dict:
    """`extract_once` in a fresh Python process (its ru_maxrss is that case's alone)."""
    args = [sys.executable, "-m", "benchmarks.image_memory_benchmark", "--child",
            f"--captions={caption_file}", f"--out={out_dir}", f"--image_size={image_size}"]
    if max_pixels is not None:
        args.append(f"--max_pixels={max_pixels}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"child failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def main(argv: list[str]) -> int:
    import argparse  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=12000, help="Side of the big PNG in pixels.")
    parser.add_argument("--images", type=int, default=40, help="Ordinary 150 px images in the dataset.")
    parser.add_argument("--image_size", type=int, default=224, help="Encoder input side S.")
    parser.add_argument("--raised_max_pixels", type=int, default=150_000_000,
                        help="The raised pixel limit of case 3.")
    parser.add_argument("--child", action="store_true", help="Run one case in this process.")
    parser.add_argument("--captions", help="(--child) the caption file.")
    parser.add_argument("--out", help="(--child) the feature store folder.")
    parser.add_argument("--max_pixels", type=int, default=None, help="(--child) the pixel limit.")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(extract_once(args.captions, args.out, args.image_size, args.max_pixels)))
        return 0

    with tempfile.TemporaryDirectory(prefix="image_memory_benchmark_") as root:
        plain = write_dataset(os.path.join(root, "plain"), args.images, None)
        started = time.perf_counter()
        with_big = write_dataset(os.path.join(root, "big"), args.images, args.size)
        big_file = os.path.join(root, "big", "images", BIG_IMAGE)
        print(f"dataset: {args.images} x 150 px JPEG (+ {BIG_IMAGE}: {args.size} x {args.size} px, "
              f"{os.path.getsize(big_file) / 1e6:.2f} MB, written in {time.perf_counter() - started:.1f} s, "
              f"{args.size * args.size * 3 / 1e6:.0f} MB decoded); encoder input {args.image_size} px; "
              f"this process peaked at {_gib(peak_rss_bytes())}")
        cases = [("without the big image", plain, None),
                 ("with it, default limit (refused)", with_big, None),
                 (f"with it, limit raised to {args.raised_max_pixels:,} px", with_big, args.raised_max_pixels)]
        results = []
        for index, (label, captions, max_pixels) in enumerate(cases):
            result = run_child(captions, os.path.join(root, f"store_{index}"), args.image_size, max_pixels)
            results.append({"case": label, **result})
            outcome = "extracted" if result["error"] is None else "refused: " + result["error"].replace("\n", " ")
            print(f"{label:<48} peak {_gib(result['peak_rss_bytes'])} "
                  f"(before extracting {_gib(result['peak_rss_before_extraction_bytes'])}), "
                  f"{result['seconds']:.1f} s, {result['images']} images; {outcome}")
        worst = max(r["peak_rss_bytes"] for r in results)
        print(json.dumps({"results": results, "worst_peak_rss_bytes": worst,
                          "target_bytes": 2 * 10 ** 9, "meets_target": worst <= 2 * 10 ** 9}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
