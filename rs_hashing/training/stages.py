"""The two stages of a default run: frozen heads first, then the encoders' tops tuned.

A DUCH run with trainable encoder tops (`model.image_trainable_stages`,
`model.text_trainable_layers`) and `train.tuned_epochs > 0` trains in two stages, each
an ordinary run folder with its own feature store:

    run_dir/frozen/   the frozen stage: `train.epochs` epochs of the heads on the frozen
                      encoders' features (`features.features`), the papers' training
    run_dir/          the tuned stage: `train.tuned_epochs` more epochs from the frozen
                      stage's heads, discriminator and binary targets (`train.init_from`),
                      the tops trainable, on the store of the activations that enter them
                      (`features.tuned_features`)

On RSICD-AID (64 bits, 3 split seeds), 100 frozen epochs then 10 with EfficientNet-Lite0's
last stage at 10x the heads' learning rate beat the frozen run by +0.026 mAP@20 in
image->text, and the authors' code by +0.018 both ways; the choice was made on the
validation split (README, "Seeds").

`run_dir` is the finished run (`HashingModel.from_run`, search, export read it); its
config.json is the tuned stage's, whose `init_from` names the frozen stage. Both folders
keep the run-folder rules (`run_folder.start_run`): the same command resumes either
stage, another configuration is refused by the stage it changes.

Importing this module imports no TensorFlow.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from rs_hashing import config as config_lib

FROZEN_STAGE = "frozen"


class Stages(NamedTuple):
    """The run folders' configurations of a two-stage run."""

    frozen: config_lib.Config
    tuned: config_lib.Config


def tops(config: config_lib.Config) -> tuple[int, int]:
    """(image stages, text layers) that train with the heads."""
    return config.model.image_trainable_stages, config.model.text_trainable_layers


def is_two_stage(config: config_lib.Config) -> bool:
    """Whether `config` trains in two stages: DUCH, trainable tops, `tuned_epochs > 0`,
    and not itself a continuation (`init_from`)."""
    return (config.model.method == "duch" and any(tops(config)) and config.train.tuned_epochs > 0
            and not config.train.init_from)


def tuned_features_path(config: config_lib.Config) -> str:
    """`features.tuned_features`, or the frozen store's folder with the cut appended
    (`feats/rsicd` -> `feats/rsicd_image1`; `_image1_text1` with both tops)."""
    if config.features.tuned_features:
        return config.features.tuned_features
    if not config.features.features:
        raise ValueError("features is empty: give the feature store folder (--features); the tuned stage's "
                         "store is named after it unless --tuned_features is given")
    image, text = tops(config)
    suffix = (f"_image{image}" if image else "") + (f"_text{text}" if text else "")
    return os.path.normpath(config.features.features) + suffix


def _store_stages(config: config_lib.Config) -> Stages:
    """The two stages of `config`, but for what says where each trains: each reads its
    own store (`features.features`) and neither is two-stage again."""
    return Stages(
        config_lib.apply_overrides(config, {"image_trainable_stages": 0, "text_trainable_layers": 0,
                                            "tuned_epochs": 0, "tuned_features": ""}),
        config_lib.apply_overrides(config, {"features": tuned_features_path(config), "tuned_features": "",
                                            "tuned_epochs": 0}))


def stage_configs(config: config_lib.Config, run_dir: str | None = None) -> Stages:
    """The frozen and the tuned stage of a two-stage `config` (`is_two_stage`), their
    run folders under `run_dir` (the config's by default)."""
    if not is_two_stage(config):
        raise ValueError("stage_configs: not a two-stage run (DUCH, trainable tops, tuned_epochs > 0, no init_from)")
    run_dir = run_dir or config.train.run_dir
    if not run_dir:
        raise ValueError("run_dir is empty: give the run folder (--run_dir)")
    frozen_dir = os.path.join(run_dir, FROZEN_STAGE)
    frozen, tuned = _store_stages(config)
    return Stages(config_lib.apply_overrides(frozen, {"run_dir": frozen_dir}),
                  config_lib.apply_overrides(tuned, {"init_from": frozen_dir, "epochs": config.train.tuned_epochs,
                                                     "run_dir": run_dir}))


def store_configs(config: config_lib.Config) -> list[config_lib.Config]:
    """The configs of the feature stores a run reads, in order (each store's folder is
    its `features.features`): the frozen store then the tuned one for a two-stage run,
    else the config's own store."""
    return list(_store_stages(config)) if is_two_stage(config) else [config]
