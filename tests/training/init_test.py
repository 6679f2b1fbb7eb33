"""Tests for rs_hashing.training's front door, `run`: the driver of the configured method,
and a package import that loads no TensorFlow."""

import dataclasses
import subprocess
import sys
import types

import pytest

from rs_hashing import config as config_lib
from rs_hashing import training
from tests import testing


def test_importing_the_package_imports_no_tensorflow():
    code = ("import sys, rs_hashing.training\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=testing.REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("method", ["duch", "chnr"])
def test_run_trains_with_the_driver_of_the_method(monkeypatch, method):
    from rs_hashing.training import chnr, duch  # pylint: disable=import-outside-toplevel

    calls = []
    for name, module in (("duch", duch), ("chnr", chnr)):
        monkeypatch.setattr(module, "train", lambda config, name=name, **kwargs: calls.append((name, kwargs)) or
                            {"method": name})
    config = testing.tiny_config(method=method)
    dataset = object()
    assert training.run(config, "runs/x", verbose=0, dataset=dataset, overwrite=True) == {"method": method}
    assert calls == [(method, dict(workdir="runs/x", verbose=0, dataset=dataset, overwrite=True))]


def test_an_unknown_method_is_refused():
    config = testing.tiny_config()
    odd = dataclasses.replace(config, model=types.SimpleNamespace(method="dsah"))
    with pytest.raises(ValueError, match="method='dsah' is not one of duch, chnr"):
        training.run(odd)
    assert config_lib.METHODS == ("duch", "chnr")
