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
        text = f.read()
    assert json.loads(text)["model"]["bits"] == 128
    assert text.startswith('{\n  "data": {') and text.endswith("}\n")  # indented, sorted keys
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]  # no temporary left
    assert config_lib.load_config(str(tmp_path / "run")) == config


def test_load_config_rejects_unknown_fields(tmp_path):
    values = config_lib.to_dict(config_lib.Config())
    values["model"]["bitz"] = 3
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(KeyError, match="bitz"):
        config_lib.load_config(str(tmp_path))


def test_flag_specs_cover_every_field_with_the_right_kind():
    specs = {spec.name: spec for spec in config_lib.flag_specs()}
    assert (specs["bits"].kind, specs["bits"].choices, specs["bits"].section) == ("integer", None, "model")
    assert specs["temperature"].kind == "float"
    assert (specs["method"].kind, specs["method"].choices) == ("enum", config_lib.METHODS)
    assert specs["lr_decay_epochs"].kind == "list"
    assert specs["data_dir"].kind == "string"
    assert specs["detector_augmented_views"].kind == "bool"
    assert specs["adversarial_weight"].optional and not specs["bits"].optional
    every_field = [f.name for s in config_lib.SECTIONS
                   for f in dataclasses.fields(type(getattr(config_lib.Config(), s)))]
    assert sorted(specs) == sorted(every_field)  # field names are unique across sections


def test_flag_specs_carry_each_fields_meaning_and_allowed_values():
    specs = {spec.name: spec for spec in config_lib.flag_specs()}
    assert specs["bits"].help == "Number of bits of each hash code"
    assert specs["bits"].allowed == "a positive multiple of 8"
    assert specs["method"].allowed == "one of duch, chnr"
    assert specs["train_fraction"].allowed == "in (0, 1)"
    assert specs["noise_rate"].allowed == "in [0, 1]"
    assert specs["clean_fraction"].allowed == "in [0, 1)"
    assert specs["temperature"].allowed == "> 0"
    assert specs["phase1_epochs"].allowed == ">= 0"
    assert specs["lr_decay_epochs"].allowed == "a list of integers >= 0"
    assert specs["detector_augmented_views"].allowed == "true or false"
    assert specs["run_dir"].allowed == "a folder"


def test_every_field_of_every_section_is_documented():
    for section in config_lib.SECTIONS:
        for field in dataclasses.fields(type(getattr(config_lib.Config(), section))):
            help_text = field.metadata.get("help", "")
            assert help_text.strip() and "\n" not in help_text, f"{section}.{field.name}"


def test_checks_describe_their_values_and_name_the_bad_one():
    assert config_lib.PositiveMultiple(8).describe() == "a positive multiple of 8"
    assert config_lib.Range(0, 1).describe() == "in (0, 1)"
    assert config_lib.Range(0, low_closed=True).describe() == ">= 0"
    assert config_lib.OneOf(("duch", "chnr")).describe() == "one of duch, chnr"
    assert config_lib.IntegerList(config_lib.NON_NEGATIVE).describe() == "a list of integers >= 0"
    with pytest.raises(ValueError) as error:
        config_lib.ModelConfig(bits=63)
    assert str(error.value) == "bits=63 is not allowed: a positive multiple of 8"
    with pytest.raises(ValueError) as error:
        config_lib.TrainConfig(lr_decay_epochs=(1, -2))
    assert str(error.value) == "lr_decay_epochs=(1, -2) is not allowed: a list of integers >= 0"
    with pytest.raises(ValueError, match=r"^clean_fraction=1.0 is not allowed: in \[0, 1\)$"):
        config_lib.DataConfig(clean_fraction=1.0)
    with pytest.raises(ValueError, match=r"^caption_mode='every' is not allowed: one of one, random, all_pairs$"):
        config_lib.TrainConfig(caption_mode="every")
    # Bounds are exact: the closed end is allowed, the open end is not.
    assert config_lib.DataConfig(noise_rate=1.0).noise_rate == 1.0
    with pytest.raises(ValueError, match="train_fraction=1.0"):
        config_lib.DataConfig(train_fraction=1.0)
    # An unset optional weight is not checked; a set one is.
    assert config_lib.ModelConfig(adversarial_weight=None).adversarial_weight is None
    with pytest.raises(ValueError, match=r"^adversarial_weight=-0.5 is not allowed: >= 0$"):
        config_lib.ModelConfig(adversarial_weight=-0.5)


def test_check_value_parses_and_checks_one_field():
    assert config_lib.check_value("train", "lr_decay_epochs", ["3", "9"]) == (3, 9)
    assert config_lib.check_value("model", "bits", 32) == 32
    with pytest.raises(ValueError, match="bits=12 is not allowed"):
        config_lib.check_value("model", "bits", 12)
    with pytest.raises(TypeError, match="must be a list of integers"):
        config_lib.check_value("train", "lr_decay_epochs", ["a"])


def test_legacy_field_names_load_under_their_new_names(tmp_path):
    values = config_lib.to_dict(config_lib.get_preset("smoke"))
    del values["train"]["run_dir"], values["features"]["encode_batch_size"]
    values["train"]["workdir"] = "runs/old"  # the names an older run wrote
    values["features"]["extract_batch_size"] = 8
    (tmp_path / "config.json").write_text(json.dumps(values))
    config = config_lib.load_config(str(tmp_path))
    assert config.train.run_dir == "runs/old"
    assert config.features.encode_batch_size == 8
    assert config.features.image_encoder == "tiny_cnn"
    values["train"]["run_dir"] = "runs/new"
    with pytest.raises(KeyError, match="train.workdir"):
        config_lib.from_dict(values)


def test_config_from_flags_applies_only_given_flags():
    values = {"bits": 16, "epochs": None, "method": "chnr", "lr_decay_epochs": ["2", "4"], "verbosity": 1}
    config = config_lib.config_from_flags("rsicd", values)
    assert config.model.bits == 16 and config.model.method == "chnr"
    assert config.train.epochs == config_lib.get_preset("rsicd").train.epochs
    assert config.train.lr_decay_epochs == (2, 4)
    with pytest.raises(ValueError, match="unknown preset"):
        config_lib.config_from_flags("nope", {})
