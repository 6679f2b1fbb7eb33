r"""Image hashing speed, file size and bit agreement: TFLite vs SavedModel vs Keras.

    nice -n 10 python -m benchmarks.export_benchmark --run_dir=runs/duch64 [--images=200]

On the same RSICD-AID images (from <repo>/../shared/data/rsicd), for this machine:

* model only, from preprocessed pixels: the Keras model (image encoder + image head,
  the reference), the SavedModel's `encode_image_pixels` signature, and the TFLite
  image model in fp32, fp16 and int8 (ai-edge-litert, all cores);
* end to end, from the JPEG files: the SavedModel's `encode_image` (decode and resize
  in the graph) and the edge runtime (`EdgeEncoder`: decode and resize with simplejpeg /
  Pillow in threads, then TFLite);
* file sizes, and the share of bits (and of whole codes) equal to the Keras model's.

int8 is measured even where `export_tflite` would refuse it (< 99% of bits).
"""

import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401 - the SavedModel's tokenizer ops.
from absl import app, flags

from rs_hashing.edge import edge_encoder
from rs_hashing import config as config_lib
from rs_hashing.export import serving_export, tflite_export
from rs_hashing.export.image_sample import ImageSample
from rs_hashing.hashing_model import HashingModel

flags.DEFINE_string("run_dir", None, "Finished run folder.", required=True)
flags.DEFINE_string("data_dir", "../shared/data/rsicd", "RSICD-AID folder (Karpathy JSON and images).")
flags.DEFINE_integer("images", 200, "RSICD-AID images to time and compare on.", lower_bound=1)
flags.DEFINE_integer("calibration_images", 100, "Other RSICD-AID images to calibrate int8 on.", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Images per call, for every runtime.", lower_bound=1)
flags.DEFINE_list("quantizations", list(tflite_export.QUANTIZATIONS), "TFLite variants to measure.")
flags.DEFINE_string("out", None, "Folder to keep the exported files in (default: a temporary one).")
FLAGS = flags.FLAGS


def _timed(function, count: int, warmup) -> tuple[np.ndarray, float]:
    """(hash codes, images per second) of `function()`, after one warm-up call."""
    warmup()
    start = time.perf_counter()
    hashes = np.asarray(function(), np.float32)
    return hashes, count / (time.perf_counter() - start)


def _batched(signature, key: str, values, batch_size: int) -> np.ndarray:
    return np.concatenate([signature(**{key: tf.constant(values[i:i + batch_size])})["hash"].numpy()
                           for i in range(0, len(values), batch_size)])


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def main(argv):
    del argv
    data = config_lib.DataConfig(dataset="rsicd", data_dir=FLAGS.data_dir)
    try:
        sample = ImageSample.from_dataset(data, FLAGS.images, name="RSICD-AID")
        calibration = ImageSample.from_dataset(data, FLAGS.calibration_images, offset=0.5, name="RSICD-AID")
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: RSICD-AID not found: {e}") from None
    out = FLAGS.out or tempfile.mkdtemp(prefix="export_benchmark_")
    os.makedirs(out, exist_ok=True)
    hashing_model = HashingModel.from_run(FLAGS.run_dir)
    batch, count = FLAGS.batch_size, len(sample.paths)
    encoded = [open(p, "rb").read() for p in sample.paths]
    pixels = np.stack([hashing_model.preprocess_image_bytes(b) for b in encoded])
    # encode_image_pixels takes uint8 of any size; these are the same images, resized.
    pixels_uint8 = np.round(pixels).astype(np.uint8)
    results = {"machine_cores": os.cpu_count(), "images": sample.source, "batch_size": batch,
               "bits": hashing_model.bits, "image_size": hashing_model.image_size, "rows": {}}
    rows = results["rows"]

    reference, speed = _timed(lambda: hashing_model.image_hash_from_pixels(pixels, batch), count,
                              lambda: hashing_model.image_hash_from_pixels(pixels[:batch], batch))
    rows["keras (pixels)"] = {"images_per_s": speed, "bytes": None}

    export_path = serving_export.export_savedmodel(hashing_model, os.path.join(out, "serving"), warmup=False)
    signatures = tf.saved_model.load(export_path).signatures
    hashes, speed = _timed(lambda: _batched(signatures["encode_image_pixels"], "image", pixels_uint8, batch), count,
                           lambda: _batched(signatures["encode_image_pixels"], "image", pixels_uint8[:batch], batch))
    rows["savedmodel encode_image_pixels (pixels rounded to uint8)"] = {
        "images_per_s": speed, "bytes": _folder_bytes(export_path), **tflite_export.agreement(reference, hashes)}
    hashes, speed = _timed(lambda: _batched(signatures["encode_image"], "image_bytes", encoded, batch), count,
                           lambda: _batched(signatures["encode_image"], "image_bytes", encoded[:batch], batch))
    rows["savedmodel encode_image (JPEG bytes)"] = {
        "images_per_s": speed, "bytes": _folder_bytes(export_path), **tflite_export.agreement(reference, hashes)}

    calibration_pixels = np.stack([hashing_model.preprocess_image_bytes(open(p, "rb").read()) for p in calibration.paths])
    for quantization in FLAGS.quantizations:
        representative = (lambda: ({"image": calibration_pixels[i:i + 1]} for i in range(len(calibration_pixels))))
        content = tflite_export.convert(tflite_export.image_hashing_function(hashing_model), quantization,
                                        representative if quantization == "int8" else None)
        path = os.path.join(out, f"codes_{quantization}.tflite")
        with open(path, "wb") as f:
            f.write(content)
        runtime = edge_encoder.EdgeEncoder(path, batch_size=batch)
        hashes, speed = _timed(lambda: runtime.encode_pixels(pixels)["hash"], count,
                               lambda: runtime.encode_pixels(pixels[:batch]))
        rows[f"tflite {quantization} (pixels)"] = {"images_per_s": speed, "bytes": len(content),
                                                   **tflite_export.agreement(reference, hashes)}
        hashes, speed = _timed(lambda: runtime.encode_files(sample.paths)["hash"], count,
                               lambda: runtime.encode_files(sample.paths[:batch]))
        rows[f"tflite {quantization} edge_encode (JPEG files, {runtime.jpeg_decoder})"] = {
            "images_per_s": speed, "bytes": len(content), **tflite_export.agreement(reference, hashes)}

    for row in rows.values():
        row["images_per_s"] = round(row["images_per_s"], 1)
    print(json.dumps(results, indent=2))
    print("\n| path | images/s | file MB | bits equal to Keras | codes equal |\n|---|---|---|---|---|")
    for name, row in rows.items():
        size = f"{row['bytes'] / 2**20:.1f}" if row["bytes"] else "-"
        bits = f"{100 * row['bit_agreement']:.2f}%" if "bit_agreement" in row else "reference"
        codes = f"{100 * row['code_agreement']:.1f}%" if "code_agreement" in row else "-"
        print(f"| {name} | {row['images_per_s']} | {size} | {bits} | {codes} |")
    print(f"\nfiles in {out}")


if __name__ == "__main__":
    app.run(main)
