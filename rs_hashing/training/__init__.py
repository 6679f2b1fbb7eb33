"""Training of the hashing nets: one front door, `run(config)`, for DUCH and CHNR.

    from rs_hashing import training
    metrics = training.run(config)          # config.model.method picks the driver

The drivers are two short modules on a shared kit: `duch` (one `fit` on every pair) and
`chnr` (noise detector, then hashing on the trusted subset, then on every pair weighted
by the detector, with `chnr_detector`'s helpers); `run_kit` holds what both do (data,
model, checkpoint, callbacks, `fit`, the finished run folder, whose rules it describes).

Importing this package imports no TensorFlow: `run` imports its driver when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    if config.model.method == "chnr":
        from rs_hashing.training import chnr as driver
    elif config.model.method == "duch":
        from rs_hashing.training import duch as driver
    else:
        raise ValueError(f"method={config.model.method!r} is not one of duch, chnr")
    return driver.train(config, workdir=workdir, verbose=verbose, dataset=dataset, overwrite=overwrite)
