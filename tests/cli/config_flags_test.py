"""The shared config flags, run as a command would run them: each case is a fresh Python
process (absl flags are global) that defines the flags and parses a command line."""

import json
import os
import subprocess
import sys

import pytest

from rs_hashing import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A command in miniature: its own flag, the config flags, then the config as JSON.
COMMAND = """
import json, sys
from absl import app, flags
from rs_hashing import config as config_lib
from rs_hashing.cli import config_flags
flags.DEFINE_string("features", "mine", "The command's own flag of a config field's name.")
DEFINED = config_flags.define_config_flags("demo")
def main(argv):
    {before}
    try:
        config = config_flags.config_from_flags()
    except ValueError as e:
        config_flags.exit_with_error(e)
    print(json.dumps({{"config": config_lib.to_dict(config), "defined": DEFINED,
                      "tensorflow": "tensorflow" in sys.modules}}))
app.run(main, flags_parser=config_flags.parse_flags)
"""

HELP = """
import sys
from absl import flags
from rs_hashing.cli import config_flags
flags.DEFINE_string("workdir", "runs/demo", "Folder for everything the command makes.")
flags.DEFINE_enum("mode", "fast", ["fast", "exact"], "How to search.")
flags.DEFINE_multi_string("query", ["dense forest", "a lake"], "Typed caption (repeat the flag).")
names = config_flags.define_config_flags("demo")
print(config_flags.format_help("rs-hashing train", "Trains a model.\\n\\n    rs-hashing train --bits=32\\n",
                               ["workdir", "mode", "query"], names, sys.argv[1]))
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _command(*args: str, before: str = "pass") -> subprocess.CompletedProcess:
    return _run(COMMAND.format(before=before), *args)


def _one_error_line(result: subprocess.CompletedProcess, status: int) -> str:
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_given_flags_override_the_preset_and_nothing_else():
    result = _command("--preset=rsicd", "--bits=32", "--lr_decay_epochs=3,9", "--method=chnr",
                      "--detector_augmented_views")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    config = out["config"]
    assert config["data"]["dataset"] == "rsicd"
    assert config["model"]["bits"] == 32 and config["model"]["method"] == "chnr"
    assert config["model"]["detector_augmented_views"] is True
    assert config["train"]["lr_decay_epochs"] == [3, 9]
    assert config["train"]["epochs"] == 100  # the rsicd preset's
    assert config["data"]["clean_fraction"] == 0.2  # the method's default
    # The command's own --features is neither redefined nor read as the config field.
    assert "features" not in out["defined"] and config["features"]["features"] == ""
    assert out["defined"][:3] == ["preset", "dataset", "data_dir"] and "run_dir" in out["defined"]
    assert out["tensorflow"] is False


def test_the_default_preset_is_demo():
    config = json.loads(_command().stdout)["config"]
    assert config["data"]["dataset"] == "sentinel2_default"
    assert config["train"]["epochs"] == 40 and config["model"]["hidden_dim"] == 1024


def test_a_bad_value_is_one_line_naming_the_flag_and_what_is_allowed():
    line = _one_error_line(_command("--bits=63"), 2)
    assert line == "error: flag --bits=63: bits=63 is not allowed: a positive multiple of 8"
    line = _one_error_line(_command("--method=foo"), 2)
    assert line.startswith("error: flag --method=foo:") and "duch|chnr" in line
    line = _one_error_line(_command("--temperature=warm"), 2)
    assert line.startswith("error: flag --temperature=warm:") and line.endswith("(allowed: a number > 0)")
    line = _one_error_line(_command("--lr_decay_epochs=1,-2"), 2)
    assert "--lr_decay_epochs" in line and line.endswith("is not allowed: a list of integers >= 0")


def test_several_bad_values_are_still_one_line():
    line = _one_error_line(_command("--bits=63", "--train_fraction=2"), 2)
    assert "--bits=63" in line and "train_fraction=2.0 is not allowed: in (0, 1)" in line


def test_an_unknown_flag_is_one_line():
    line = _one_error_line(_command("--bitz=3"), 2)
    assert line.startswith("error: Unknown command line flag 'bitz'")


def test_a_value_that_fails_while_building_the_config_names_its_flag():
    # Set past the parse-time validator, as a value could reach the config another way.
    result = _command(before="flags.FLAGS['lr_decay_epochs'].value = ['1', '-2']")
    assert _one_error_line(result, 1) == (
        "error: --lr_decay_epochs=(1, -2) is not allowed: a list of integers >= 0")


@pytest.mark.parametrize("flag", ["--data_dir=x", "--caption_file=x.json", "--image_dir=x"])
def test_dataset_paths_need_a_preset_or_a_dataset(flag):
    name = flag[2:].split("=")[0]
    assert _one_error_line(_command(flag), 1) == (
        f"error: --{name} needs --preset (one of rsicd, ucm, sydney, rsitmd, nwpu, csv) or --dataset "
        "to say which layout it is")


def test_dataset_paths_with_an_explicit_preset_or_dataset_are_fine():
    config = json.loads(_command("--data_dir=x", "--dataset=ucm").stdout)["config"]
    assert (config["data"]["dataset"], config["data"]["data_dir"]) == ("ucm", "x")
    config = json.loads(_command("--data_dir=x", "--preset=demo").stdout)["config"]  # the default, but said
    assert (config["data"]["dataset"], config["data"]["data_dir"]) == ("sentinel2_default", "x")


def test_help_explains_every_flag_with_the_presets_default():
    result = _run(HELP, "rsicd")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("usage: rs-hashing train [--flag=value ...]\n\nTrains a model.\n\n"
                           "    rs-hashing train --bits=32\n")
    assert "\nflags:\n  --workdir: Folder for everything the command makes (default: runs/demo)\n" in text
    assert "  --mode: How to search (default: fast; allowed: one of fast, exact)\n" in text
    assert '  --query: Typed caption (repeat the flag) (default: "dense forest", "a lake")\n' in text
    assert "config flags (values from preset 'rsicd'; --preset picks another):" in text
    assert ("    --bits: Number of bits of each hash code (default: 64; allowed: a positive multiple of 8)\n"
            in text)
    assert "(default: rsicd; allowed: one of sentinel2_default, rsicd," in text
    assert "--lr_decay_epochs: Epochs after which the learning rate is multiplied by lr_decay" in text
    assert "(default: 1,51;\n        allowed: a list of integers >= 0)" in text
    assert "--adversarial_weight:" in text and "(default: unset; allowed: a number >= 0)" in text
    sections = [line.strip() for line in text.splitlines() if line in ("  data:", "  features:", "  model:",
                                                                        "  train:")]
    assert sections == ["data:", "features:", "model:", "train:"]
    assert max(len(line) for line in text.splitlines()) <= 100
    # Every config field has its line.
    assert sum(line.startswith("    --") for line in text.splitlines()) == len(config_lib.flag_specs())


def test_help_shows_the_defaults_of_the_preset_asked_for():
    text = _run(HELP, "smoke").stdout
    assert "config flags (values from preset 'smoke'; --preset picks another):" in text
    assert "--bits: Number of bits of each hash code (default: 16; allowed: a positive multiple of 8)" in text
    assert "--image_encoder:" in text and "(default: tiny_cnn;" in text
