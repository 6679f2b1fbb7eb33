r"""Exports a trained run as a SavedModel for TF Serving (raw captions and images in).

    python -m export.export_savedmodel --workdir=runs/duch64 --export_base=serving \
        [--model_name=rs_hashing] [--version=N]

Writes serving/<model_name>/<version>/ (the next free integer version by default) with
the signatures encode_text (also serving_default), encode_image and encode_image_pixels,
each returning code, packed and hash, plus a TF Serving warm-up file. The version folder
appears atomically. See docs/serving.md for requests.
"""

import json

from absl import app, flags

from rs_hashing.export import serving_export
from rs_hashing.export.hashing_encoders import HashingEncoders
from train import config_flags

flags.DEFINE_string("workdir", None, "Finished run folder (config.json, model.weights.h5, "
                    "model_config.json).", required=True)
flags.DEFINE_string("export_base", None, "Folder a model server polls; the model goes to "
                    "<export_base>/<model_name>/<version>/.", required=True)
flags.DEFINE_string("model_name", serving_export.DEFAULT_MODEL_NAME, "Model folder name.")
flags.DEFINE_integer("version", None, "Version number; default: the next free one.", lower_bound=0)
flags.DEFINE_bool("warmup", True, "Write assets.extra/tf_serving_warmup_requests (needs "
                  "tensorflow-serving-api).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        encoders = HashingEncoders.from_workdir(FLAGS.workdir)
        path = serving_export.export_savedmodel(
            encoders, FLAGS.export_base, FLAGS.model_name, FLAGS.version, warmup=FLAGS.warmup,
            source=FLAGS.workdir)
    except (FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
        config_flags.exit_with_error(e)
    print(json.dumps({"export": path, "signatures": list(serving_export.SIGNATURES),
                      "bits": encoders.bits, "image_size": encoders.image_size}, indent=2))


if __name__ == "__main__":
    app.run(main)
