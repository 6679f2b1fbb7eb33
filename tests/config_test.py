import dataclasses
import json

import pytest

from rs_hashing import config as config_lib


def test_presets_are_valid_configs():
    for name, preset in config_lib.PRESETS.items():
        assert isinstance(preset, config_lib.Config), name
    assert config_lib.get_preset("rsicd").data.dataset == "rsicd"
    assert config_lib.get_preset("rsicd").data.split_seed == 42
    assert config_lib.get_preset("smoke").features.image_encoder == "tiny_cnn"


def test_unknown_preset_is_an_error():
    with pytest.raises(ValueError, match="unknown preset 'rsicdd'"):
        config_lib.get_preset("rsicdd")


def test_overrides_replace_single_fields_only():
    base = config_lib.get_preset("rsicd")
    config = config_lib.apply_overrides(base, {"bits": 32, "data.split_seed": 7, "epochs": 3})
    assert config.model.bits == 32 and config.data.split_seed == 7 and config.train.epochs == 3
    assert config.model.hidden_dim == base.model.hidden_dim
    assert config.features == base.features
    assert base.model.bits == 64  # frozen: the preset itself is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.model.bits = 16  # type: ignore[misc]


def test_unknown_and_ambiguous_keys_are_errors():
    config = config_lib.get_preset("smoke")
    with pytest.raises(KeyError, match="unknown config key 'bitz'"):
        config_lib.apply_overrides(config, {"bitz": 3})
    with pytest.raises(KeyError, match="unknown config key 'model.epochs'"):
        config_lib.apply_overrides(config, {"model.epochs": 3})


def test_values_are_type_checked_and_validated():
    config = config_lib.get_preset("smoke")
    with pytest.raises(TypeError, match="bits='64'"):
        config_lib.apply_overrides(config, {"bits": "64"})
    with pytest.raises(ValueError, match="bits=12"):
        config_lib.apply_overrides(config, {"bits": 12})
    with pytest.raises(ValueError, match="method='dcmh'"):
        config_lib.apply_overrides(config, {"method": "dcmh"})
    with pytest.raises(ValueError, match="noise_rate=1.5"):
        config_lib.apply_overrides(config, {"noise_rate": 1.5})
    # ints widen to floats, tuples parse from flag strings.
    config = config_lib.apply_overrides(config, {"temperature": 2, "lr_decay_epochs": "3,9"})
    assert config.model.temperature == 2.0 and isinstance(config.model.temperature, float)
    assert config.train.lr_decay_epochs == (3, 9)


def test_save_and_load_round_trip(tmp_path):
    config = config_lib.apply_overrides(config_lib.get_preset("ucm"), {"bits": 128, "noise_rate": 0.3})
    path = config_lib.save_config(config, str(tmp_path / "run"))
    assert path.endswith("config.json")
    with open(path) as f:
        assert json.load(f)["model"]["bits"] == 128
    assert config_lib.load_config(str(tmp_path / "run")) == config


def test_load_config_rejects_unknown_fields(tmp_path):
    values = config_lib.to_dict(config_lib.Config())
    values["model"]["bitz"] = 3
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(KeyError, match="bitz"):
        config_lib.load_config(str(tmp_path))


def test_flag_specs_cover_every_field_with_the_right_kind():
    specs = {name: (kind, choices) for name, kind, choices, _ in config_lib.flag_specs()}
    assert specs["bits"] == ("integer", None)
    assert specs["temperature"] == ("float", None)
    assert specs["method"] == ("enum", config_lib.METHODS)
    assert specs["lr_decay_epochs"][0] == "list"
    assert specs["data_dir"][0] == "string"
    every_field = [f.name for s in config_lib.SECTIONS
                   for f in dataclasses.fields(type(getattr(config_lib.Config(), s)))]
    assert sorted(specs) == sorted(every_field)  # field names are unique across sections


def test_config_from_flags_applies_only_given_flags():
    values = {"bits": 16, "epochs": None, "method": "chnr", "lr_decay_epochs": ["2", "4"], "verbosity": 1}
    config = config_lib.config_from_flags("rsicd", values)
    assert config.model.bits == 16 and config.model.method == "chnr"
    assert config.train.epochs == config_lib.get_preset("rsicd").train.epochs
    assert config.train.lr_decay_epochs == (2, 4)
    with pytest.raises(ValueError, match="unknown preset"):
        config_lib.config_from_flags("nope", {})
