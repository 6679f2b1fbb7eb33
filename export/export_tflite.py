r"""Converts a trained run's image encoder + image head to TFLite, builtin ops only.

    python -m export.export_tflite --workdir=runs/duch64 --out=edge/codes_fp16.tflite \
        --quantization=fp16 [--images=a.jpg,b.png,dir/] [--num_images=200]

Writes the image model (float pixels [N, S, S, 3] in [0, 255] -> code, packed, hash),
the text model from token ids (<stem>_text.tflite; the tokenizer cannot be converted)
and <stem>.json with sizes, operators and the bit agreement with the Keras model,
measured on RSICD-AID images (<repo>/../shared/data/rsicd) unless --images is given.
int8 calibrates on other RSICD-AID images (or --calibration_images) and is refused,
with the measured figure, below 99% bit agreement.
"""

import json

from absl import app, flags

from rs_hashing.errors import DatasetError
from rs_hashing.export import tflite_export
from rs_hashing.export.hashing_encoders import HashingEncoders
from rs_hashing.export.image_sample import ImageSample
from train import config_flags

flags.DEFINE_string("workdir", None, "Finished run folder.", required=True)
flags.DEFINE_string("out", None, "The image model's .tflite file.", required=True)
flags.DEFINE_enum("quantization", "fp32", list(tflite_export.QUANTIZATIONS),
                  "fp32; fp16 weights (about half the size); int8 weights and activations.")
flags.DEFINE_list("images", None, "Image files or folders to measure agreement on; default: "
                  "RSICD-AID images.")
flags.DEFINE_list("calibration_images", None, "Image files or folders for int8 calibration; "
                  "default: other RSICD-AID images.")
flags.DEFINE_integer("num_images", 200, "RSICD-AID images to measure on.", lower_bound=1)
flags.DEFINE_integer("num_calibration_images", 100, "RSICD-AID images to calibrate int8 on.",
                     lower_bound=1)
flags.DEFINE_bool("text", True, "Also write the text model (<stem>_text.tflite).")
flags.register_validator("out", lambda value: value is None or value.endswith(".tflite"),
                         message="--out must end in .tflite")
FLAGS = flags.FLAGS


def _samples():
    """(measurement, calibration) image samples from the flags or RSICD-AID."""
    if FLAGS.images:
        sample = ImageSample.from_files(FLAGS.images)
    else:
        sample = ImageSample.rsicd_aid(FLAGS.num_images)
    if FLAGS.calibration_images:
        calibration = ImageSample.from_files(FLAGS.calibration_images)
    else:
        # Offset by half a step: calibration images are never the measured ones.
        calibration = ImageSample.rsicd_aid(FLAGS.num_calibration_images, offset=0.5)
    return sample, calibration


def main(argv):
    del argv
    try:
        sample, calibration = _samples()
        if sample is None:
            print("warning: no --images and no RSICD-AID data; bit agreement is not measured")
        encoders = HashingEncoders.from_workdir(FLAGS.workdir)
        report = tflite_export.export_tflite(
            encoders, FLAGS.out, FLAGS.quantization, sample=sample, calibration=calibration,
            text=FLAGS.text, source=FLAGS.workdir)
    except (DatasetError, FileNotFoundError, ValueError) as e:  # QuantizationRejectedError too.
        config_flags.exit_with_error(e)
    summary = {key: report[key] for key in ("file", "bytes", "quantization", "agreement", "edge_agreement")}
    if "text_model" in report:
        summary["text_model"] = {k: report["text_model"].get(k)
                                 for k in ("file", "bytes", "agreement", "written", "refused")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
