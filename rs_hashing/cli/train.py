r"""Trains a cross-modal hashing model (DUCH; CHNR with --method=chnr) and evaluates it.

    rs-hashing train --preset=rsicd --data_dir=../shared/data/rsicd \
        --features=feats/rsicd --method=duch --bits=64 --run_dir=runs/duch64

Writes config.json, checkpoints (a killed run resumes), history.csv, TensorBoard logs,
encoders.json, metrics.json, codes.npz and plots into --run_dir. Every config field is a
flag; --preset picks the values of the ones not given.

A run folder belongs to one configuration once training started: run again with the
same flags, it resumes; with other ones (more epochs, other bits, ...) it is refused,
naming the fields that differ, and left as it was. --overwrite starts a fresh run there
instead (the previous run's files are removed; other files are left). Features made with
other encoder settings (image size, sequence length, encoders) are refused too.
"""

import json

from absl import flags

from rs_hashing import training
from rs_hashing.cli import config_flags
from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
# The drivers import TensorFlow: here, under the command's quiet start-up (`quiet_imports`),
# not when `training.run` is called.
from rs_hashing.training import chnr, duch  # noqa: F401  pylint: disable=unused-import

DEFAULT_PRESET = "demo"


def define_flags() -> list[str]:
    flags.DEFINE_bool("overwrite", False, "Start a fresh run in a --run_dir that holds one (of any config): the "
                      "previous run's files are removed first. Without it a folder of another config is refused "
                      "and one of the same config resumes.")
    return ["overwrite"]


def main(argv):
    del argv
    overwrite = flags.FLAGS.overwrite
    try:
        config = config_flags.config_from_flags()
        config_flags.seed_run(config)
        results = training.run(config, overwrite=overwrite)
    except USER_ERRORS as e:
        exit_with_error(e)
    print(json.dumps({k: results[k] for k in results if k.startswith("map@")}, indent=2))
