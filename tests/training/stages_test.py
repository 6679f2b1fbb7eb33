"""Tests for rs_hashing.training.stages: the two stages of a default run (frozen heads,
then the encoder tops tuned), their run folders and stores."""

import os

import pytest

from rs_hashing import config as config_lib
from rs_hashing import training
from rs_hashing.errors import RunConflictError
from rs_hashing.training import stages


def _config(**overrides):
    return config_lib.apply_overrides(config_lib.get_preset("rsicd"), {
        "features": "feats/rsicd", "run_dir": "runs/duch64", **overrides})


def test_the_default_trains_frozen_heads_then_the_image_top():
    config = _config()
    assert stages.is_two_stage(config)
    frozen, tuned = stages.stage_configs(config)
    # The frozen stage: the papers' run, in run_dir/frozen, on the frozen store.
    assert (frozen.model.image_trainable_stages, frozen.model.text_trainable_layers) == (0, 0)
    assert (frozen.train.epochs, frozen.train.tuned_epochs, frozen.train.init_from) == (100, 0, "")
    assert (frozen.features.features, frozen.train.run_dir) == ("feats/rsicd", os.path.join("runs/duch64", "frozen"))
    # The tuned stage: 10 epochs from the frozen stage's heads, on the image top's store.
    assert (tuned.model.image_trainable_stages, tuned.train.epochs, tuned.train.tuned_epochs) == (1, 10, 0)
    assert (tuned.features.features, tuned.train.run_dir) == ("feats/rsicd_image1", "runs/duch64")
    assert tuned.train.init_from == os.path.join("runs/duch64", "frozen")
    assert tuned.train.tower_learning_rate_factor == 10.0
    # Each stage alone is an ordinary one-stage run; the rest of the config is the user's.
    assert not stages.is_two_stage(frozen) and not stages.is_two_stage(tuned)
    assert frozen.data == config.data and frozen.model.bits == config.model.bits
    assert tuned.model == config.model and tuned.data == config.data
    assert stages.stage_configs(config, "elsewhere").tuned.train.run_dir == "elsewhere"
    assert [c.features.features for c in stages.store_configs(config)] == ["feats/rsicd", "feats/rsicd_image1"]


@pytest.mark.parametrize("overrides", [
    {"image_trainable_stages": 0},              # frozen encoders: one stage
    {"tuned_epochs": 0},                        # the tops train from the first epoch
    {"init_from": "runs/other"},                # itself a continuation
    {"method": "chnr", "image_trainable_stages": 1}])
def test_one_stage_runs(overrides):
    config = _config(**overrides)
    assert not stages.is_two_stage(config)
    assert stages.store_configs(config) == [config]
    with pytest.raises(ValueError, match="not a two-stage run"):
        stages.stage_configs(config)


def test_the_tuned_store_is_named_after_the_frozen_one_unless_given():
    assert stages.tuned_features_path(_config(image_trainable_stages=2)) == "feats/rsicd_image2"
    assert stages.tuned_features_path(_config(text_trainable_layers=1)) == "feats/rsicd_image1_text1"
    assert stages.tuned_features_path(_config(image_trainable_stages=0, text_trainable_layers=1)) == "feats/rsicd_text1"
    assert stages.tuned_features_path(_config(features="feats/rsicd/")) == "feats/rsicd_image1"
    assert stages.tuned_features_path(_config(tuned_features="/data/tops")) == "/data/tops"
    with pytest.raises(ValueError, match="features is empty"):
        stages.tuned_features_path(_config(features=""))


def test_chnr_and_older_run_folders_read_as_frozen():
    chnr = config_lib.config_from_flags("rsicd", {"method": "chnr"})
    assert chnr.model.image_trainable_stages == 0 and not stages.is_two_stage(chnr)
    # A config.json written before the tops existed is a frozen one-stage run, not today's default.
    values = config_lib.to_dict(_config())
    del values["model"]["image_trainable_stages"], values["model"]["text_trainable_layers"]
    del values["train"]["tuned_epochs"]
    old = config_lib.from_dict(values)
    assert (old.model.image_trainable_stages, old.model.text_trainable_layers, old.train.tuned_epochs) == (0, 0, 0)


def test_a_folder_of_another_run_is_refused_before_either_stage_starts(tmp_path):
    run_dir = str(tmp_path / "run")
    config_lib.save_config(_config(image_trainable_stages=0, run_dir=run_dir), run_dir)
    with pytest.raises(RunConflictError, match=r"run/config.json: the folder holds a run of another configuration "
                                               r"\(.*model.image_trainable_stages: 0 -> 1"):
        training.run(_config(run_dir=run_dir, data_dir=str(tmp_path / "no_data")))
    assert not os.path.exists(os.path.join(run_dir, stages.FROZEN_STAGE))
