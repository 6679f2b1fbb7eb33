"""The shared kit of the training drivers (`duch`, `chnr`): data, model, checkpoint,
callbacks, `fit` and the finished run folder.

A driver is a short script over this kit: `prepare` (dataset, validated feature store,
protocol split, noise), `start_run` (the folder's rules, below), `encoder_tops` (the
trainable encoder tops of tower mode, if any), `build_model` and `compile_model` (or
`warm_model`: both, built and warm-started from `init_from`'s run), `restore_checkpoint`
of `hashing_checkpoint_objects`, `fit_hashing` with `hashing_callbacks`, and
`finish_run`. A run folder holds:

    config.json            the resolved configuration
    checkpoints/           the last good epoch (model, both optimizers, epoch counter);
                           a killed run resumes here and ends as an uninterrupted one
    history.csv            loss terms, one row per epoch across resumes
    tensorboard/           TensorBoard logs
    noise.json             realised noise rate and corrupted pair indices (if any)
    model.weights.h5       final weights, with model_config.json to rebuild the model
    encoders.json          identity of the encoders that made the features (package,
                           version, weights fingerprint), checked when the run is loaded
    metrics.json           mAP@k (authors' and truncated), precision@k, wall time
    codes.npz              binary codes and labels of the query and database sets
    pr_curves.json, pr_curve.png, training_curves.png

and CHNR's detector files besides (see `chnr`).

A run folder belongs to one configuration from the moment training starts (the rules are
`rs_hashing.training.run_folder`'s, `checkpoints`' and `weights_file`'s; the callbacks of
`fit` are in `callbacks`):

- `run_folder.start_run` compares an existing config.json with the new config and
  refuses, before writing anything, a config that differs (`RunConflictError`, naming
  each differing field as `section.field: old -> new`). The same config resumes (a
  killed run ends as an uninterrupted one; a finished one is evaluated and its artefacts
  written again). "The same" is every field but `run_folder.RUN_LOCATION_FIELDS` (where
  the folder and the extraction batches are, which change no result). `train.epochs` is
  no exception: a finished 2-epoch run asked for 4 is refused, not continued, because
  its config.json, metrics and codes record a 2-epoch run and a continuation killed
  half-way would leave a folder describing neither run; train the longer run into
  another folder.
- `overwrite=True` starts a fresh run (`run_folder.clear_run`): the files a run writes
  (`run_folder.RUN_FILES`, checkpoint and TensorBoard files, temporary files of
  interrupted writes) are removed first, config.json last; anything else in the folder
  is left alone.
- Every artefact is written atomically (`rs_hashing.atomic_files`; weights are made in
  memory first by `weights_file`, because HDF5 crashes the process on a full disk), and
  `finish_run` writes its artefacts to temporary files first and moves them all into
  place only when every one was written, metrics.json last: a full disk or an error
  while finishing leaves the previous artefacts whole and from one run. TensorBoard
  event files are appended, as TensorBoard expects; they are logs, not artefacts.
- `checkpoints.restore_checkpoint` reads every tensor of the latest checkpoint before
  restoring it; an unreadable one (truncated, missing) is moved aside with a warning and
  the previous one is used (the run resumes from that earlier epoch and still ends as an
  uninterrupted one); with none usable it stops with a `TrainingError` naming the files.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing import plots
from rs_hashing.atomic_files import atomic_path, savez_atomic, write_bytes_atomic, write_json_atomic
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.data.loaders import load_dataset
from rs_hashing.data.noisy_pairs import NoisyPairs
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.encoders.encoder_identity import check_encoder_identity, encoder_identity
from rs_hashing.encoders.encoder_towers import EncoderTowers
from rs_hashing.errors import EncoderMismatchError, FeatureStoreError, RunFolderError
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from rs_hashing.training import evaluation
from rs_hashing.training.binary_target_updater import BinaryTargetUpdater
from rs_hashing.training.callbacks import (EpochCheckpoint, HistoryLog, NanGuard, StepDecay, StraightThrough,
                                          _read_rows)
from rs_hashing.training.run_folder import TENSORBOARD, check_feature_settings, check_tower_cut
from rs_hashing.training.training_pairs import TrainingPairs
from rs_hashing.training.weights_file import weights_file_bytes


class RunData(NamedTuple):
    """What a run trains and is evaluated on (`prepare`)."""

    dataset: CaptionDataset
    store: FeatureStore
    split: ProtocolSplit
    noise: NoisyPairs | None  # None: no noise injected, no trusted subset


def prepare(config: config_lib.Config, dataset: CaptionDataset | None = None) -> RunData:
    """Dataset (loaded unless given), validated feature store, protocol split and noise
    of a config. A store made with other encoder settings than the config's, or for
    another cut of the encoders, is refused (`check_feature_settings`, `check_tower_cut`)."""
    dataset = dataset if dataset is not None else load_dataset(config.data, check_images=False)
    if not config.features.features:
        raise ValueError("features is empty: give the feature store folder (--features, as written by "
                         "`rs-hashing extract-features`)")
    store = FeatureStore.open(config.features.features, dataset)
    check_feature_settings(store, config.features)
    check_tower_cut(store, config)
    split = ProtocolSplit.for_dataset(dataset, config.data)
    noise = None
    if config.data.noise_rate > 0 or config.data.clean_fraction > 0:
        noise = NoisyPairs.inject(np.asarray(store.labels)[split.train], config.data.noise_rate,
                                  config.data.noise_seed, config.data.clean_fraction)
    return RunData(dataset, store, split, noise)


def learning_rate_at(config: config_lib.TrainConfig, epoch: int) -> float:
    """The hashing nets' learning rate in the 0-based `epoch` (counted across CHNR's two
    phases): x`lr_decay` after each epoch listed in `lr_decay_epochs`, 1-based ("after
    epoch e" is the 0-based epoch index e on). The papers' x0.8 after epochs 1 and 51
    (DUCH, 100 epochs); CHNR's code steps after epoch 101 as well (150 epochs)."""
    return config.learning_rate * config.lr_decay ** sum(1 for e in config.lr_decay_epochs if epoch >= e)


def encoder_tops(config: config_lib.Config, store: FeatureStore) -> tuple[keras.Model | None, keras.Model | None]:
    """(image_tower, text_tower): the trainable encoder tops `config.model` asks for, new
    copies of the pretrained layers, or None for a frozen encoder.

    The installed encoders must be those that filled the store (their identity is
    checked against the manifest's), and each top must take the store's cached shape.
    """
    towers = EncoderTowers.of_config(config)
    if not towers.trainable:
        return None, None
    recorded = store.manifest.get("encoders")
    if recorded:
        check_encoder_identity(recorded, towers.encoders.identity(), store.path)
    image_tower, text_tower = towers.image_top(), towers.text_top()
    cached = store.towers or {}
    checks = []
    if image_tower is not None:
        checks.append(("image", tuple(image_tower.input_shape[1:]), tuple(cached.get("image_shape", ()))))
    if text_tower is not None:
        # Per token: the cached length is the store's longest caption, the top takes any.
        checks.append(("text", tuple(text_tower.input["states"].shape[2:]), tuple(cached.get("text_shape", ()))[1:]))
    for name, takes, stored in checks:
        if takes != stored:
            raise FeatureStoreError(f"{store.path}: the {name} activations cached are {stored}, the {name} top "
                                    f"takes {takes}; extract the features again")
    return image_tower, text_tower


def build_model(config: config_lib.Config, image_dim: int, text_dim: int, num_train: int,
                **overrides) -> CrossModalHashingModel:
    """The hashing model of a config; `overrides` replace constructor arguments (CHNR's
    loss set turns terms off this way; `encoder_tops`' towers come in this way)."""
    m = config.model
    arguments = dict(
        image_dim=image_dim, text_dim=text_dim, bits=m.bits, hidden_dim=m.hidden_dim, num_train=num_train,
        contrastive_inter_weight=m.contrastive_inter_weight,
        contrastive_intra_image_weight=m.contrastive_intra_image_weight,
        contrastive_intra_text_weight=m.contrastive_intra_text_weight,
        adversarial_weight=m.adversarial_weight, quantization_weight=m.quantization_weight,
        bit_balance_weight=m.bit_balance_weight, temperature=m.temperature, gp_weight=m.gp_weight,
        # Coupled L2 of the authors' batch-sum loss at batch 256, on our mean loss (1/512).
        hash_l2=config.train.weight_decay / 512, variant=m.variant, target_codes=config.train.target_codes,
        # The released code's weighted sum (CHNR) is sum(w l) / N on our mean scale.
        pair_weight_norm="count" if m.variant == "as_coded" else "weights",
        seed=config.train.seed)
    unknown = set(overrides) - set(arguments) - {"use_adversarial", "discriminator_l2", "image_tower", "text_tower"}
    if unknown:
        raise ValueError(f"build_model: unknown model argument(s) {sorted(unknown)}")
    arguments.update(overrides)
    return CrossModalHashingModel(**arguments)


def warm_model(config: config_lib.Config, data: RunData, num_train: int,
               towers: tuple[keras.Model | None, keras.Model | None], batch_size: int,
               compile_for_training: bool = True) -> tuple[CrossModalHashingModel, str | None]:
    """The DUCH model of a run, built and warm-started: `build_model` with `towers` (from
    `encoder_tops`), compiled when it will train, built for `batch_size` and started from
    `config.train.init_from` (`warm_start`). Returns (model, the source folder or None)."""
    image_tower, text_tower = towers
    model = build_model(config, data.store.image_dim, data.store.text_dim, num_train,
                        image_tower=image_tower, text_tower=text_tower)
    if compile_for_training:
        compile_model(model, config)
    model.build_for_features(batch_size)
    return model, warm_start(model, config, data)


def warm_start(model: CrossModalHashingModel, config: config_lib.Config, data: RunData) -> str | None:
    """Starts `model` from `config.train.init_from`'s finished run: hash heads,
    discriminator and binary targets copied; encoder tops, optimizers and the epoch count
    start afresh. Call before `restore_checkpoint`, so that a resumed run takes its own
    checkpoint instead. Returns the source folder, or None when not set.

    Raises:
        RunFolderError: the folder is not a finished run, or its heads do not fit this
            run (bits, widths, input dims, number of training items, training split or
            the encoders that made its features differ; each is named).
    """
    source_dir = config.train.init_from
    if not source_dir:
        return None
    from rs_hashing.hashing_model import HashingModel  # pylint: disable=import-outside-toplevel

    if config.model.method != "duch":
        raise RunFolderError(f"init_from={source_dir}: warm starts are for DUCH runs, not {config.model.method}")
    # The source's own encoders stay unbuilt (lazy); its features' encoders are compared
    # with this store's below.
    source = HashingModel.from_run(source_dir, check_encoders=False)
    heads = source.heads
    differences = [f"{name} {getattr(heads, name)} there, {getattr(model, name)} here"
                   for name in ("bits", "hidden_dim", "image_dim", "text_dim", "num_train")
                   if getattr(heads, name) != getattr(model, name)]
    source_split = ProtocolSplit.for_dataset(data.dataset, source.config.data)
    if not np.array_equal(np.asarray(source_split.train), np.asarray(data.split.train)):
        differences.append("another training split (its split, caption or validation seeds differ)")
    recorded, here = source.recorded_encoders(), data.store.manifest.get("encoders")
    if recorded and here:
        try:
            check_encoder_identity(recorded, here, source_dir)
        except EncoderMismatchError as e:
            differences.append(f"features of other encoders ({e})")
    if differences:
        raise RunFolderError(f"init_from={source_dir}: its heads do not fit this run: {'; '.join(differences)}")
    for name in ("image_head", "text_head", "discriminator"):
        getattr(model, name).set_weights(getattr(heads, name).get_weights())
    model.binary_targets.assign(heads.binary_targets)
    return source_dir


def compile_model(model: CrossModalHashingModel, config: config_lib.Config) -> None:
    t = config.train
    # The encoder tops: an Adam like the heads', at tower_learning_rate_factor x their rate.
    tower_optimizer = (keras.optimizers.Adam(learning_rate=t.learning_rate * t.tower_learning_rate_factor,
                                             epsilon=1e-8) if model.has_towers else None)
    model.compile(
        # epsilon 1e-8 as torch's Adam, which the papers used.
        hash_optimizer=keras.optimizers.Adam(learning_rate=t.learning_rate, epsilon=1e-8),
        discriminator_optimizer=keras.optimizers.Adam(learning_rate=1e-4, beta_1=0.5, beta_2=0.9, epsilon=1e-8),
        tower_optimizer=tower_optimizer, jit_compile=t.jit_compile)


def read_history(path: str) -> dict[str, list[float]]:
    """The values of a history CSV (history.csv, detector_history.csv) by name, one per
    epoch; NA entries (columns absent in an epoch) left out."""
    rows = _read_rows(path)
    history = {}
    for key in (rows[0] if rows else {}):
        values = [row[key] for row in rows if row.get(key) not in (None, "", "NA")]
        if values and key != "epoch":
            history[key] = [float(value) for value in values]
    return history


def hashing_checkpoint_objects(model: CrossModalHashingModel, epoch_var: tf.Variable) -> dict:
    """What a hashing run's checkpoint holds: model, both optimizers, next epoch.

    `all_model_variables` lists every model variable as well: tf.train.Checkpoint does
    not track Keras 3 SeedGenerator states through the model, and without them a resumed
    run would redraw its gradient-penalty interpolations from the start seed.
    """
    objects = dict(model=model, hash_optimizer=model.hash_optimizer,
                   discriminator_optimizer=model.discriminator_optimizer, epoch=epoch_var,
                   all_model_variables=list(model.variables))
    if model.tower_optimizer is not None:
        objects["tower_optimizer"] = model.tower_optimizer
    return objects


def hashing_callbacks(model: CrossModalHashingModel, config: config_lib.Config, pairs: TrainingPairs,
                      workdir: str, manager: tf.train.CheckpointManager, epoch_var: tf.Variable, epochs: int,
                      first_epoch: int, number_offset: int = 0) -> list[keras.callbacks.Callback]:
    """Learning-rate steps, binary-target refresh, NaN guard, checkpoints at epoch ends,
    history.csv (rows before `first_epoch` kept) and TensorBoard logs of a hashing `fit`
    on `pairs`."""
    t = config.train
    # The binary targets come from the codes of the epoch's own training steps; only a
    # model set to take them from an inference pass needs the items to pass over.
    target_views = pairs.all_views() if model.target_codes == "inference" else None
    tower_decay = ([StepDecay(model.tower_optimizer,
                              lambda epoch: learning_rate_at(t, epoch) * t.tower_learning_rate_factor)]
                   if model.tower_optimizer is not None else [])
    # Epochs are counted across CHNR's two phases, so its last epochs are phase 2's.
    last_epoch = t.phase1_epochs + t.phase2_epochs if config.model.method == "chnr" else t.epochs
    return tower_decay + [
        StepDecay(model.hash_optimizer, lambda epoch: learning_rate_at(t, epoch)),
        StraightThrough(model, last_epoch - t.straight_through_epochs),
        BinaryTargetUpdater(target_views),
        NanGuard(manager.directory),
        # The epoch's history row before its checkpoint: a run killed in between resumes
        # before that epoch, whose row is then dropped and written again.
        HistoryLog(os.path.join(workdir, "history.csv"), first_epoch),
        EpochCheckpoint(manager, epoch_var, t.checkpoint_every, epochs, number_offset=number_offset),
        keras.callbacks.TensorBoard(os.path.join(workdir, TENSORBOARD), write_graph=False),
    ]


def fit_hashing(model: CrossModalHashingModel, pairs: TrainingPairs, config: config_lib.Config, first_epoch: int,
                epochs: int, callbacks: list, verbose: int) -> None:
    """`model.fit` on the pairs' batches for epochs [first_epoch, epochs); the batches'
    `index` is the items' global ids, so a subset of the training set (CHNR's phase 1)
    trains the same rows of the binary-target table as the whole set."""
    t = config.train
    model.fit(pairs.dataset(t.caption_mode, t.batch_size, t.seed, first_epoch, epochs),
              epochs=epochs, initial_epoch=first_epoch,
              steps_per_epoch=pairs.steps_per_epoch(t.caption_mode, t.batch_size),
              callbacks=callbacks, verbose=verbose, shuffle=False)  # Order comes from TrainingPairs.


def finish_run(model: CrossModalHashingModel, config: config_lib.Config, store: FeatureStore, split: ProtocolSplit,
               workdir: str, extra: dict, extra_files: Callable[[Callable[[str], str]], None] | None = None) -> dict:
    """Writes final weights, the encoders' identity, evaluation (metrics.json with `extra`
    added, codes, PR curves) and plots of a trained hashing model; returns the metrics.

    Everything is evaluated first and written to temporary files beside the artefacts,
    which replace them together only once all were written (metrics.json, which marks a
    finished run, last): a failure while finishing leaves the folder as it was.
    `extra_files(staged)` writes further artefacts, each to `staged(name)`.
    """
    results, curves, codes = evaluation.evaluate_model(model, store, split)
    results.update(extra)
    history = read_history(os.path.join(workdir, "history.csv"))
    weights = weights_file_bytes(model)
    with contextlib.ExitStack() as stack:
        def staged(name: str) -> str:
            return stack.enter_context(atomic_path(os.path.join(workdir, name)))

        # Moved into place in reverse order of staging: metrics.json last.
        write_json_atomic(staged("metrics.json"), results)
        write_bytes_atomic(staged("model.weights.h5"), weights)
        write_json_atomic(staged("model_config.json"), model.get_config())
        # The identity of the encoders that made the features: a HashingModel refuses to
        # load the run against other installed weights. Stores made before it was recorded
        # give the identity of the encoders installed now.
        write_json_atomic(staged("encoders.json"), store.manifest.get("encoders") or encoder_identity(config.features))
        write_json_atomic(staged("pr_curves.json"), curves)
        savez_atomic(staged("codes.npz"), **codes)
        plots.plot_pr_curves(curves, staged("pr_curve.png"),
                             title=f"{config.model.method.upper()} {config.model.bits} bits")
        if history:
            plots.plot_training_curves(history, staged("training_curves.png"))
        if extra_files is not None:
            extra_files(staged)
    return results
