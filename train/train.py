r"""Trains a cross-modal hashing model (DUCH; CHNR with --method=chnr) and evaluates it.

    python -m train.train --preset=rsicd --data_dir=../shared/data/rsicd \
        --features=/tmp/features/rsicd --method=duch --bits=64 --workdir=runs/duch64

Writes config.json, checkpoints (a killed run resumes), history.csv, TensorBoard logs,
metrics.json, codes.npz and plots into --workdir. Every config field is a flag.
"""

import json

from absl import app, flags

from rs_hashing.errors import DatasetError, FeatureStoreError, TrainingError
from rs_hashing.training import trainer
from train import config_flags

config_flags.define_config_flags(default_preset="rsicd")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = config_flags.config_from_flags()
    config_flags.seed_run(config)
    try:
        if config.model.method == "chnr":
            from rs_hashing.training import chnr_trainer  # pylint: disable=import-outside-toplevel

            results = chnr_trainer.train_chnr(config)
        else:
            results = trainer.train(config)
    except (DatasetError, FeatureStoreError, TrainingError, FileNotFoundError, ValueError) as e:
        config_flags.exit_with_error(e)
    print(json.dumps({k: results[k] for k in results if k.startswith("map@")}, indent=2))


if __name__ == "__main__":
    app.run(main)
