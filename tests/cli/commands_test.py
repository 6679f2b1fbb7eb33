"""The `rs-hashing` command: subcommands, help, one-line errors, quiet start-up."""

import os
import subprocess
import sys

import pytest

from rs_hashing import cli
from tests import testing


def _rs_hashing(*args, env=None, cwd=None):
    """`python -m rs_hashing.cli ARGS` (what the console script runs), with the user's
    environment: TensorFlow's logging is not pre-silenced here."""
    env = dict(os.environ if env is None else env)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "rs_hashing.cli", *args], cwd=cwd or testing.REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_every_subcommand_has_a_module_with_the_command_interface():
    import importlib

    assert list(cli.COMMANDS) == ["demo", "extract-features", "train", "index", "search",
                                  "serve", "export-savedmodel", "export-tflite", "edge-encode"]
    for name, command in cli.COMMANDS.items():
        module = importlib.import_module(f"rs_hashing.cli.{command.module}")
        assert callable(module.main) and hasattr(module, "DEFAULT_PRESET"), name
        if module.DEFAULT_PRESET is None and name not in cli.NO_TENSORFLOW:
            assert callable(module.define_flags), name  # a command without config flags has its own


def test_usage_lists_the_commands_and_unknown_ones_are_one_line_errors():
    result = _rs_hashing("--help")
    assert result.returncode == 0
    for name in cli.COMMANDS:
        assert f"  {name} " in result.stdout
    result = _rs_hashing("trian")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown command 'trian'; choose one of " + ", ".join(cli.COMMANDS) + " (rs-hashing --help)"]


def test_train_help_explains_bits_with_default_and_allowed_values():
    result = _rs_hashing("train", "--help")
    assert result.returncode == 0, result.stderr
    bits = [line for line in result.stdout.splitlines() if line.strip().startswith("--bits")]
    assert bits, result.stdout
    text = " ".join(result.stdout.split())  # help lines may wrap
    assert "multiple of 8" in text and "default: 64" in text
    assert "--run_dir" in result.stdout and "--features" in result.stdout
    assert result.stderr == ""  # no TensorFlow start-up lines


def test_bad_values_are_one_line_errors_without_tensorflow_noise():
    result = _rs_hashing("train", "--bits=63")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--bits" in result.stderr and "multiple of 8" in result.stderr
    result = _rs_hashing("search", "--run_dir=/nowhere/run", "--index=/nowhere/a.index", "--text=a beach")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: /nowhere/run: run folder does not exist"]


def test_data_dir_without_a_preset_is_refused_for_extraction_and_training(tmp_path):
    for command in ("extract-features", "train"):
        result = _rs_hashing(command, f"--data_dir={tmp_path}", f"--features={tmp_path}/f")
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "--preset" in result.stderr and "rsicd" in result.stderr


@pytest.mark.parametrize("module, command", [("train.train", "train"), ("export.export_tflite", "export-tflite")])
def test_checkout_modules_are_the_same_commands(module, command):
    result = testing.run_module(module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: rs-hashing {command}")
