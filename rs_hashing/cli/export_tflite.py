r"""Converts a trained run's image encoder + image head to TFLite, builtin ops only.

    rs-hashing export-tflite --run_dir=runs/duch64 --out=edge/codes_fp16.tflite \
        --quantization=fp16 [--images=a.jpg,b.png,dir/] [--num_images=200]

Writes the image model (float pixels [N, S, S, 3] in [0, 255] -> code, packed, hash),
the text model from token ids (<stem>_text.tflite; the tokenizer cannot be converted)
and <stem>.json with sizes, operators and the bit agreement with the Keras model,
measured on --images or, by default, on --num_images images of the run's own dataset.
int8 calibrates on other images of that dataset (or --calibration_images) and is
refused, with the measured figure, below 99% bit agreement.
"""

import json

from absl import flags

from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.export import tflite_export
from rs_hashing.export.image_sample import ImageSample
from rs_hashing.hashing_model import HashingModel

DEFAULT_PRESET = None


def define_flags() -> list[str]:
    flags.DEFINE_string("run_dir", None, "Finished run folder.", required=True)
    flags.DEFINE_string("out", None, "The image model's .tflite file to write.", required=True)
    flags.DEFINE_enum("quantization", "fp32", list(tflite_export.QUANTIZATIONS),
                      "fp32; fp16 weights (about half the size); int8 weights and activations.")
    flags.DEFINE_list("images", None, "Image files or folders (searched recursively) to measure the "
                      "bit agreement on; default: images of the run's own dataset.")
    flags.DEFINE_list("calibration_images", None, "Image files or folders for int8 calibration; "
                      "default: other images of the run's own dataset.")
    flags.DEFINE_integer("num_images", 200, "Dataset images to measure on (without --images).",
                         lower_bound=1)
    flags.DEFINE_integer("num_calibration_images", 100, "Dataset images to calibrate int8 on "
                         "(without --calibration_images).", lower_bound=1)
    flags.DEFINE_bool("text", True, "Also write the text model (<stem>_text.tflite).")
    flags.register_validator("out", lambda value: value is None or value.endswith(".tflite"),
                             message="--out must end in .tflite")
    return ["run_dir", "out", "quantization", "images", "calibration_images", "num_images",
            "num_calibration_images", "text"]


def _samples(model: HashingModel) -> tuple[ImageSample | None, ImageSample | None]:
    """(measurement, calibration) images from the flags or, by default, the run's own
    dataset (None where that dataset cannot be read here)."""
    FLAGS = flags.FLAGS

    def from_run_dataset(count: int, offset: float) -> ImageSample | None:
        try:
            return ImageSample.from_dataset(model.config.data, count, offset)
        except USER_ERRORS as e:
            print(f"warning: the run's dataset cannot be read here ({e})")
            return None

    sample = (ImageSample.from_files(FLAGS.images) if FLAGS.images
              else from_run_dataset(FLAGS.num_images, 0.0))
    # Offset by half a step: calibration images are never the measured ones.
    calibration = None
    if FLAGS.calibration_images:
        calibration = ImageSample.from_files(FLAGS.calibration_images)
    elif FLAGS.quantization == "int8":
        calibration = from_run_dataset(FLAGS.num_calibration_images, 0.5)
    return sample, calibration


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    try:
        model = HashingModel.from_run(FLAGS.run_dir)
        sample, calibration = _samples(model)
        if sample is None:
            print("warning: no --images and no readable dataset; the bit agreement is not measured")
        report = tflite_export.export_tflite(model, FLAGS.out, FLAGS.quantization, sample=sample,
                                             calibration=calibration, text=FLAGS.text, source=FLAGS.run_dir)
    except USER_ERRORS as e:  # QuantizationRejectedError is a ValueError.
        exit_with_error(e)
    summary = {key: report[key] for key in ("file", "bytes", "quantization", "agreement", "edge_agreement")}
    if "text_model" in report:
        summary["text_model"] = {k: report["text_model"].get(k)
                                 for k in ("file", "bytes", "agreement", "written", "refused")}
    print(json.dumps(summary, indent=2))
