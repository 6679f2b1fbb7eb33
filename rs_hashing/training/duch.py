"""Trains DUCH: the hashing nets on every training pair, one `fit`.

`train(config)` is the DUCH driver behind `rs_hashing.training.run` (and so
`rs-hashing train --method=duch`); it writes the run folder `run_kit` describes.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.atomic_files import write_json_atomic
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.training import run_kit
from rs_hashing.training.checkpoints import restore_checkpoint
from rs_hashing.training.run_folder import CHECKPOINTS, start_run
from rs_hashing.training.training_pairs import TrainingPairs


def train(config: config_lib.Config, workdir: str | None = None, verbose: int = 2,
          pairs_hook: Callable[[TrainingPairs], None] | None = None,
          dataset: CaptionDataset | None = None, overwrite: bool = False, extra: dict | None = None) -> dict:
    """Trains DUCH on the configured features, evaluates, and writes the run folder.

    Args:
      config: the resolved configuration.
      workdir: run folder (defaults to `config.train.run_dir`).
      verbose: Keras fit verbosity (1 = progress bar, 2 = a line per epoch).
      pairs_hook: called with the training pairs before training (e.g. to set weights).
      dataset: the config's dataset when the caller has already loaded it.
      overwrite: start a fresh run in a folder that holds one (see `run_folder.start_run`).
      extra: more fields for metrics.json (e.g. a two-stage run's frozen stage).
    Returns: the content of metrics.json.
    """
    started = time.perf_counter()
    # Every refusal (features made otherwise, encoders other than the store's, a folder
    # of another run) comes before the first write.
    data = run_kit.prepare(config, dataset)
    # Tower mode: the encoders' trainable tops, with their pretrained weights.
    towers = run_kit.encoder_tops(config, data.store)
    workdir = start_run(config, workdir, overwrite=overwrite)
    if data.noise is not None:
        write_json_atomic(os.path.join(workdir, "noise.json"), data.noise.summary())
    pairs = TrainingPairs.from_store(data.store, data.split, data.noise)
    if pairs_hook is not None:
        pairs_hook(pairs)

    t = config.train
    # Heads from a finished run (init_from); a checkpoint of this run, if any, wins below.
    model, warm_from = run_kit.warm_model(config, data, len(pairs), towers, t.batch_size)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    manager = restore_checkpoint(os.path.join(workdir, CHECKPOINTS),
                                 **run_kit.hashing_checkpoint_objects(model, epoch_var))
    first_epoch = int(epoch_var.numpy())

    if first_epoch < t.epochs:
        callbacks = run_kit.hashing_callbacks(model, config, pairs, workdir, manager, epoch_var, t.epochs,
                                              first_epoch=first_epoch)
        run_kit.fit_hashing(model, pairs, config, first_epoch, t.epochs, callbacks, verbose)
    extra = {"train_seconds": round(time.perf_counter() - started, 1), "epochs": t.epochs,
             "resumed_from_epoch": first_epoch, **(extra or {})}
    if warm_from:
        extra["init_from"] = warm_from
    if data.noise is not None:
        extra["realised_noise_rate"] = data.noise.realised_rate
    return run_kit.finish_run(model, config, data.store, data.split, workdir, extra)
