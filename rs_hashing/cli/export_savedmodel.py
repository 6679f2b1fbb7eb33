r"""Exports a trained run as a SavedModel for TF Serving (raw captions and images in).

    rs-hashing export-savedmodel --run_dir=runs/duch64 --export_base=serving \
        [--model_name=rs_hashing] [--version=N]

Writes serving/<model_name>/<version>/ (the next free integer version by default) with
the signatures encode_text (also serving_default), encode_image and encode_image_pixels,
each returning code, packed and hash, plus a TF Serving warm-up file. The version folder
appears atomically. See docs/serving.md for requests.
"""

import json

from absl import flags

from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.export import serving_export
from rs_hashing.hashing_model import HashingModel

DEFAULT_PRESET = None


def define_flags() -> list[str]:
    flags.DEFINE_string("run_dir", None, "Finished run folder.", required=True)
    flags.DEFINE_string("export_base", None, "Folder a model server polls; the model goes to "
                        "<export_base>/<model_name>/<version>/.", required=True)
    flags.DEFINE_string("model_name", serving_export.DEFAULT_MODEL_NAME, "Model folder name.")
    flags.DEFINE_integer("version", None, "Version number; default: the next free one.", lower_bound=0)
    flags.DEFINE_bool("warmup", True, "Write assets.extra/tf_serving_warmup_requests.")
    return ["run_dir", "export_base", "model_name", "version", "warmup"]


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    try:
        model = HashingModel.from_run(FLAGS.run_dir)
        path = serving_export.export_savedmodel(model, FLAGS.export_base, FLAGS.model_name, FLAGS.version,
                                                warmup=FLAGS.warmup, source=FLAGS.run_dir)
    except (*USER_ERRORS, ImportError) as e:
        exit_with_error(e)
    print(json.dumps({"export": path, "signatures": list(serving_export.SIGNATURES),
                      "bits": model.bits, "image_size": model.image_size}, indent=2))
