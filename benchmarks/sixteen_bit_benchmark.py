r"""Bit agreement of 16-bit images across training preprocessing, the SavedModel and the
ground-station runtime: one radiometric contract everywhere.

    python -m benchmarks.sixteen_bit_benchmark --run_dir=runs/demo/run [--images=DIR] [--count=100]

Takes `--count` images (default: of the run's own dataset), turns each into 16-bit
reflectance-like pixels (v * range16_high / 255 plus noise of +-4 counts, so that
every 16-bit value maps back to the 8-bit one only through the contract's rounding),
writes them as 16-bit PNG and 3-band uint16 GeoTIFF, and compares the codes of:

* the reference: `HashingModel.encode_images` on the uint16 arrays (the contract in
  NumPy, then TensorFlow's resize and the Keras model);
* training-time preprocessing: the same files through the feature pipeline's reader;
* the SavedModel's `encode_image` on the 16-bit PNG bytes;
* `EdgeEncoder` (TFLite fp32 and the edge runtime's own reading) on both files.

Prints the share of equal bits and of equal codes for each path.
"""

import os
import tempfile
import warnings

import numpy as np
import rasterio
import tensorflow as tf
from absl import app, flags

from rs_hashing.edge.edge_encoder import EdgeEncoder
from rs_hashing.export import serving_export, tflite_export
from rs_hashing.export.image_sample import ImageSample
from rs_hashing.hashing_model import HashingModel

flags.DEFINE_string("run_dir", None, "Finished run folder.", required=True)
flags.DEFINE_list("images", None, "Image files or folders (default: the run's own dataset).")
flags.DEFINE_integer("count", 100, "Images to convert and compare.", lower_bound=1)
flags.DEFINE_string("workdir", None, "Folder for the 16-bit files and exports (default: temporary).")
FLAGS = flags.FLAGS


def _sixteen_bit(path: str, high: float, rng: np.random.Generator) -> np.ndarray:
    pixels = np.asarray(tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False))
    values = pixels.astype(np.float64) * high / 255.0 + rng.integers(-4, 5, size=pixels.shape)
    return np.clip(np.rint(values), 0, 65535).astype(np.uint16)


def _agreement(codes: np.ndarray, reference: np.ndarray) -> str:
    same = codes == reference
    return f"{100 * same.mean():.2f}% of bits, {100 * same.all(axis=1).mean():.1f}% of codes"


def main(argv):
    del argv
    model = HashingModel.from_run(FLAGS.run_dir)
    sample = (ImageSample.from_files(FLAGS.images) if FLAGS.images
              else ImageSample.from_dataset(model.config.data, FLAGS.count))
    paths = list(sample.paths[:FLAGS.count])
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="sixteen_bit_benchmark_")
    os.makedirs(os.path.join(workdir, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    arrays, pngs, tiffs = [], [], []
    for i, path in enumerate(paths):
        pixels = _sixteen_bit(path, model.config.features.range16_high, rng)
        arrays.append(pixels)
        png = os.path.join(workdir, "images", f"{i:04d}.png")
        with open(png, "wb") as f:
            f.write(tf.io.encode_png(pixels).numpy())
        tif = os.path.join(workdir, "images", f"{i:04d}.tif")
        with warnings.catch_warnings(), rasterio.open(tif, "w", driver="GTiff", width=pixels.shape[1], height=pixels.shape[0], count=3,
                           dtype="uint16") as out:
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            out.write(np.moveaxis(pixels, -1, 0))
        pngs.append(png)
        tiffs.append(tif)
    reference = model.encode_images(arrays).codes
    print(f"{sample.source}; 16-bit range 0..{model.config.features.range16_high:g}, {model.bits} bits")
    print(f"  training preprocessing, 16-bit PNG files: {_agreement(model.encode_images(pngs).codes, reference)}")
    print(f"  training preprocessing, GeoTIFF files:    {_agreement(model.encode_images(tiffs).codes, reference)}")
    export = serving_export.export_savedmodel(model, os.path.join(workdir, "serving"), warmup=False)
    signature = tf.saved_model.load(export).signatures["encode_image"]
    served = np.concatenate([signature(image_bytes=tf.constant([open(p, "rb").read() for p in pngs[i:i + 16]]))
                             ["code"].numpy() for i in range(0, len(pngs), 16)])
    print(f"  SavedModel encode_image, 16-bit PNG:      {_agreement(served, reference)}")
    tflite = os.path.join(workdir, "edge", "codes.tflite")
    tflite_export.export_tflite(model, tflite, "fp32", text=False)
    edge = EdgeEncoder(tflite)
    print(f"  edge runtime, 16-bit PNG files:           {_agreement(edge.encode_files(pngs)['code'], reference)}")
    print(f"  edge runtime, GeoTIFF files:              {_agreement(edge.encode_files(tiffs)['code'], reference)}")


if __name__ == "__main__":
    app.run(main)
