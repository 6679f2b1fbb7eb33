"""Training of the hashing nets: one front door, `run(config)`, for DUCH and CHNR.

    from rs_hashing import training
    metrics = training.run(config)          # config.model.method picks the driver

The drivers are two short modules on a shared kit: `duch` (one `fit` on every pair) and
`chnr` (noise detector, then hashing on the trusted subset, then on every pair weighted
by the detector, with `chnr_detector`'s helpers); `run_kit` holds what both do (data,
model, checkpoint, callbacks, `fit`, the finished run folder, whose rules it describes).

A DUCH run with trainable encoder tops and `train.tuned_epochs` (the default) trains in
two stages, frozen heads first and the tops tuned after (`stages`); `run` extracts the
feature stores of both stages when they are missing, then trains each stage in its own
run folder.

Importing this package imports no TensorFlow: `run` imports its driver when called.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from rs_hashing.training import stages

if TYPE_CHECKING:
    from rs_hashing import config as config_lib
    from rs_hashing.data.caption_dataset import CaptionDataset


def run(config: config_lib.Config, workdir: str | None = None, verbose: int = 2,
        dataset: CaptionDataset | None = None, overwrite: bool = False) -> dict:
    """Trains the configured method (`config.model.method`: DUCH or CHNR), evaluates,
    and writes the run folder; returns the content of its metrics.json.

    Args:
      config: the resolved configuration.
      workdir: run folder (defaults to `config.train.run_dir`).
      verbose: Keras fit verbosity (0 silent, 1 progress bar, 2 a line per epoch).
      dataset: the config's dataset when the caller has already loaded it.
      overwrite: start a fresh run in a folder that holds one (`run_folder.start_run`).
    """
    # pylint: disable=import-outside-toplevel  # TensorFlow only when training.
    if stages.is_two_stage(config):
        return _run_two_stages(config, workdir, verbose, dataset, overwrite)
    if config.model.method == "chnr":
        from rs_hashing.training import chnr as driver
    elif config.model.method == "duch":
        from rs_hashing.training import duch as driver
    else:
        raise ValueError(f"method={config.model.method!r} is not one of duch, chnr")
    return driver.train(config, workdir=workdir, verbose=verbose, dataset=dataset, overwrite=overwrite)


def _run_two_stages(config: config_lib.Config, workdir: str | None, verbose: int, dataset: CaptionDataset | None,
                    overwrite: bool) -> dict:
    """The frozen stage, then the tuned stage from its heads (`stages`); returns the
    tuned stage's metrics.json, which records the frozen stage under "frozen_stage"."""
    # pylint: disable=import-outside-toplevel  # TensorFlow only when training.
    from rs_hashing.data.loaders import load_dataset
    from rs_hashing.features.extraction import extract_run_stores
    from rs_hashing.training import duch, run_folder

    frozen, tuned = stages.stage_configs(config, workdir)
    # Both folders are checked before anything is extracted or trained.
    run_folder.check_run_folder(frozen, overwrite=overwrite)
    run_folder.check_run_folder(tuned, overwrite=overwrite)
    dataset = dataset if dataset is not None else load_dataset(config.data, check_images=False)
    # Stores not made yet; made ones are opened and checked once, by each stage's `prepare`.
    extract_run_stores(config, dataset, progress=verbose > 0, missing_only=True)
    frozen_metrics_path = os.path.join(frozen.train.run_dir, "metrics.json")
    if os.path.exists(frozen_metrics_path) and not overwrite:  # finished, of this config (checked above)
        with open(frozen_metrics_path, encoding="utf-8") as f:
            frozen_metrics = json.load(f)
        if verbose:
            print(f"Frozen stage: finished in {frozen.train.run_dir}", flush=True)
    else:
        if verbose:
            print(f"Frozen stage: {frozen.train.epochs} epochs in {frozen.train.run_dir}", flush=True)
        frozen_metrics = duch.train(frozen, verbose=verbose, dataset=dataset, overwrite=overwrite)
    if verbose:
        print(f"Tuned stage: {tuned.train.epochs} epochs with the encoder tops trainable in {tuned.train.run_dir}",
              flush=True)
    summary = {"run_dir": frozen.train.run_dir, "epochs": frozen.train.epochs,
               "train_seconds": frozen_metrics.get("train_seconds"), "map@20": frozen_metrics.get("map@20")}
    return duch.train(tuned, verbose=verbose, dataset=dataset, overwrite=overwrite, extra={"frozen_stage": summary})
