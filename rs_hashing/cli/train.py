r"""Trains a cross-modal hashing model (DUCH; CHNR with --method=chnr) and evaluates it.

    rs-hashing train --preset=rsicd --data_dir=../shared/data/rsicd \
        --features=feats/rsicd --method=duch --bits=64 --run_dir=runs/duch64

Writes config.json, checkpoints (a killed run resumes), history.csv, TensorBoard logs,
encoders.json, metrics.json, codes.npz and plots into --run_dir. Every config field is a
flag; --preset picks the values of the ones not given.
"""

import json

from rs_hashing.cli import config_flags
from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.training import trainer

DEFAULT_PRESET = "demo"


def main(argv):
    del argv
    try:
        config = config_flags.config_from_flags()
        config_flags.seed_run(config)
        if config.model.method == "chnr":
            from rs_hashing.training import chnr_trainer  # pylint: disable=import-outside-toplevel

            results = chnr_trainer.train_chnr(config)
        else:
            results = trainer.train(config)
    except USER_ERRORS as e:
        exit_with_error(e)
    print(json.dumps({k: results[k] for k in results if k.startswith("map@")}, indent=2))
