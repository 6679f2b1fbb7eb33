"""Trains CHNR: DUCH-style hashing made robust to wrongly paired captions by a detector.

`train(config)` is the CHNR driver behind `rs_hashing.training.run` (and so
`rs-hashing train --method=chnr`). A run has three explicit stages, each its own `fit`:

1. Detector (phase 1): a `NoiseDetector` learns trusted pairs against in-batch fakes on
   the clean subset (`NoisyPairs.protected`, `clean_fraction` of the training pairs,
   never corrupted) for `phase1_epochs`, with its own AdamW.
2. Hashing, phase 1: the hashing nets train on the same clean subset for
   `phase1_epochs`, every pair weighted 1. (The authors interleave 1 and 2 batch by
   batch; the detector never sees codes and the hashing nets never see the detector, so
   running them one after the other trains the same thing.)
3. Hashing, phase 2: the detector is frozen; it scores every (image, caption) pair of
   the whole noisy training set once, the scores become `TrainingPairs.pair_weights`
   (`noise_weighting`: probability, cubed or threshold), and the hashing nets train
   `phase2_epochs` more on all pairs, each pair's inter-modal contrastive term weighted.
   Before phase 2 every item's binary target is recomputed from the phase-1 nets (items
   outside the clean subset still had their random initial targets).

The trusted pairs keep their global training-item ids (`TrainingPairs.item_ids`), so
phase 1 trains the same rows of the binary-target table as phase 2. Each phase's epoch
is every pair once, its last batch the remainder (`TrainingPairs`): a trusted subset
smaller than a batch is one batch per epoch. The hashing nets' learning rate steps
(`run_kit.learning_rate_at`) count epochs across both phases, as the authors' code
(x0.8 after epochs 1, 51 and 101 of the 150: `METHOD_DEFAULTS` of the config).

Loss sets (`chnr_loss`): "chnr" is the authors' CHNR objective, weighted inter-modal
NT-Xent plus quantisation only (intra-modal, adversarial and bit-balance terms off; the
quantisation weight is the authors' 0.001 on sums, rescaled for our means exactly as
`CrossModalHashingModel.authors_equivalent_weights`). "duch" keeps the full DUCH loss
set of the config, with the same noise weights on the inter-modal term. Weights are
normalised once, sum(w * l) / sum(w) (`rs_hashing.losses.weighting`); the authors'
summed loss was not normalised by the weights.

One checkpoint (checkpoints/) holds the hashing model and optimizers, the detector with
its trainer's step seed and optimizer, and both stage counters, so a killed run resumes
in whichever stage it was and ends as an uninterrupted one. Besides everything a DUCH
run writes (`run_kit`), the run folder gets:

    detector.weights.h5      the trained detector, with detector_config.json
    detector_history.csv     phase-1 detector loss, real and fake scores per epoch
    detector.json            threshold, mean real/fake scores, ROC-AUC on the training
                             pairs (clean vs corrupted), realised noise rate, weights
    detector_scores.png      score histograms of clean and of corrupted training pairs

The run folder follows the rules of `run_folder` and `checkpoints` (one config per
folder, atomic artefacts, checkpoint fallback); detector.json and detector_scores.png
are written with the final artefacts and moved into place with them. The detector's
helpers are in `chnr_detector`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.atomic_files import write_json_atomic
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.training import chnr_detector, noise_weights, run_kit, weights_file
from rs_hashing.training.callbacks import EpochCheckpoint, HistoryLog, NanGuard
from rs_hashing.training.checkpoints import restore_checkpoint
from rs_hashing.training.run_folder import CHECKPOINTS, start_run
from rs_hashing.training.training_pairs import TrainingPairs


def chnr_model_overrides(config: config_lib.Config) -> dict:
    """`run_kit.build_model` overrides of the configured CHNR loss set."""
    if config.model.chnr_loss == "duch":
        return {}
    # CHNR as coded: inter-modal NT-Xent + quantisation. A None quantisation weight is
    # resolved by the model to the authors' balance (2 * 0.001 * bits on mean terms).
    return dict(contrastive_intra_image_weight=0.0, contrastive_intra_text_weight=0.0,
                adversarial_weight=0.0, bit_balance_weight=0.0, use_adversarial=False)


def trusted_pairs(store: FeatureStore, split: ProtocolSplit, noise: NoisyPairs) -> TrainingPairs:
    """The trusted clean subset (`noise.protected`) as training pairs of phase 1, with
    their global training-item ids."""
    return TrainingPairs.from_store(store, split, noise, items=np.flatnonzero(noise.protected))


def _check_frozen_encoders(config: config_lib.Config) -> None:
    model = config.model
    if model.image_trainable_stages or model.text_trainable_layers:
        # The detector scores [image; text] feature pairs; with trainable tops the store
        # holds activations, and which features (pretrained or tuned tops) the detector
        # should see is not settled.
        raise ValueError(
            f"image_trainable_stages={model.image_trainable_stages}, text_trainable_layers="
            f"{model.text_trainable_layers}: CHNR trains on frozen features only (its noise detector scores "
            "feature pairs); set both to 0, or use --method=duch")


def _check_config(config: config_lib.Config, noise: NoisyPairs | None) -> None:
    if config.data.clean_fraction <= 0 or noise is None or not noise.protected.any():
        raise ValueError(
            f"clean_fraction={config.data.clean_fraction!r}: CHNR needs a trusted clean subset to train its "
            "detector; set clean_fraction > 0 (the paper: 0.2 for RSICD, 0.3 for UCM)")
    if config.train.phase1_epochs < 1:
        raise ValueError(f"phase1_epochs={config.train.phase1_epochs!r}: CHNR's detector needs at least one epoch")


def _check_trusted_pairs(config: config_lib.Config, clean_pairs: TrainingPairs) -> None:
    count = clean_pairs.num_pairs(config.train.caption_mode)
    if count < 2:
        raise ValueError(f"the trusted clean subset has {count} pair(s); the detector and phase 1 need at least 2 "
                         "(in-batch fakes, batch normalisation): raise clean_fraction")


def train(config: config_lib.Config, workdir: str | None = None, verbose: int = 2,
          dataset: CaptionDataset | None = None, overwrite: bool = False) -> dict:
    """Trains CHNR (detector, hashing phase 1, hashing phase 2), evaluates, and writes
    the run folder (see the module docstring).

    Args:
      config: the resolved configuration (`clean_fraction` > 0, `phase1_epochs` >= 1).
      workdir: run folder (defaults to `config.train.run_dir`).
      verbose: Keras fit verbosity (1 = progress bar, 2 = a line per epoch).
      dataset: the config's dataset when the caller has already loaded it.
      overwrite: start a fresh run in a folder that holds one (see `run_folder.start_run`).
    Returns: the content of metrics.json, with the detector's summary under "detector".
    """
    started = time.perf_counter()
    # Every refusal (features, config, trusted subset, run folder) comes before the first write.
    _check_frozen_encoders(config)
    data = run_kit.prepare(config, dataset)
    noise = data.noise
    _check_config(config, noise)
    pairs = TrainingPairs.from_store(data.store, data.split, noise)
    clean_pairs = trusted_pairs(data.store, data.split, noise)
    _check_trusted_pairs(config, clean_pairs)
    workdir = start_run(config, workdir, overwrite=overwrite)
    write_json_atomic(os.path.join(workdir, "noise.json"), noise.summary())
    t = config.train
    phase1, total = t.phase1_epochs, t.phase1_epochs + t.phase2_epochs

    model = run_kit.build_model(config, data.store.image_dim, data.store.text_dim, len(pairs),
                                **chnr_model_overrides(config))
    run_kit.compile_model(model, config)
    model.build_for_features(t.batch_size)
    detector = chnr_detector.build_detector(config, data.store.image_dim, data.store.text_dim)
    # Standardisation statistics of the training pairs (each item with its chosen
    # caption): a fixed function of the data, so a restored checkpoint holds the same.
    detector.adapt(np.asarray(detector.pair_features(pairs.image, pairs.text_pool[pairs.chosen])))
    detector_trainer = chnr_detector.build_detector_trainer(detector, config)

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    detector_epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    manager = restore_checkpoint(
        os.path.join(workdir, CHECKPOINTS), **run_kit.hashing_checkpoint_objects(model, epoch_var),
        detector_trainer=detector_trainer, detector_optimizer=detector_trainer.optimizer,
        detector_epoch=detector_epoch_var,
        # As for the hashing model (see hashing_checkpoint_objects): list every detector
        # variable so that SeedGenerator states (dropout masks, fake partners) resume too.
        all_detector_variables=list(detector_trainer.variables))
    first_detector_epoch, first_epoch = int(detector_epoch_var.numpy()), int(epoch_var.numpy())

    # Stage 1: the detector on the trusted subset. Checkpoints 1..phase1.
    if first_detector_epoch < phase1:
        callbacks = [
            NanGuard(manager.directory),
            HistoryLog(os.path.join(workdir, "detector_history.csv"), first_detector_epoch),
            EpochCheckpoint(manager, detector_epoch_var, t.checkpoint_every, phase1),
        ]
        detector_trainer.fit(chnr_detector.detector_dataset(clean_pairs, config, first_detector_epoch, phase1),
                             epochs=phase1, initial_epoch=first_detector_epoch,
                             steps_per_epoch=clean_pairs.steps_per_epoch(t.caption_mode, t.batch_size),
                             callbacks=callbacks, verbose=verbose, shuffle=False)
    detector.trainable = False  # Frozen from here on: phase 2 only reads its scores.
    weights_file.save_weights_atomic(detector, os.path.join(workdir, "detector.weights.h5"))
    write_json_atomic(os.path.join(workdir, "detector_config.json"), detector.get_config())
    real_scores, fake_scores = chnr_detector.real_and_fake_scores(detector, clean_pairs, t.seed)
    threshold = noise_weights.midpoint_threshold(real_scores, fake_scores)

    # Stage 2: hashing phase 1 on the trusted subset, unit weights. Checkpoints after the
    # detector's, numbered phase1 + epoch.
    if first_epoch < phase1:
        callbacks = run_kit.hashing_callbacks(model, config, clean_pairs, workdir, manager, epoch_var, phase1,
                                              first_epoch=first_epoch, number_offset=phase1)
        run_kit.fit_hashing(model, clean_pairs, config, first_epoch, phase1, callbacks, verbose)

    # Stage 3: hashing phase 2 on every pair, weighted by the frozen detector.
    scores = chnr_detector.score_pool(detector, pairs)
    pairs.pair_weights = noise_weights.pair_weights(scores, config.model.noise_weighting, threshold)
    phase2_first = max(int(epoch_var.numpy()), phase1)
    if phase2_first < total:
        if phase2_first == phase1:
            # Items outside the trusted subset still have their random initial targets:
            # one inference pass over every item sets them from the phase-1 nets.
            model.update_binary_targets(pairs.all_views())
        callbacks = run_kit.hashing_callbacks(model, config, pairs, workdir, manager, epoch_var, total,
                                              first_epoch=phase2_first, number_offset=phase1)
        run_kit.fit_hashing(model, pairs, config, phase2_first, total, callbacks, verbose)
    train_seconds = round(time.perf_counter() - started, 1)

    corrupted = pairs.noisy[chnr_detector.pool_items(pairs)]
    summary = chnr_detector.detector_summary(config, noise, pairs, scores, corrupted, real_scores, fake_scores,
                                             threshold, len(clean_pairs))

    def detector_files(staged):
        # Written with the final artefacts, and moved into place with them.
        chnr_detector.plot_score_histograms(
            scores[~corrupted], scores[corrupted], threshold, staged("detector_scores.png"),
            title=f"CHNR detector, noise rate {config.data.noise_rate:g}, "
                  f"ROC-AUC {chnr_detector.format_optional(summary['roc_auc'])}")
        write_json_atomic(staged("detector.json"), summary)

    extra = {
        "train_seconds": train_seconds, "epochs": total, "phase1_epochs": phase1, "phase2_epochs": t.phase2_epochs,
        "resumed_from_epoch": first_epoch, "resumed_from_detector_epoch": first_detector_epoch,
        "realised_noise_rate": noise.realised_rate,
        "detector": {key: summary[key] for key in ("roc_auc", "roc_auc_unprotected", "threshold",
                                                   "noise_weighting", "mean_weight_clean",
                                                   "mean_weight_corrupted")},
    }
    return run_kit.finish_run(model, config, data.store, data.split, workdir, extra, extra_files=detector_files)
