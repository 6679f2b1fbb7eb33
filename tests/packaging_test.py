"""The installable package: a wheel with one `rs-hashing` command and no top-level
`train`/`export`, installed into a fresh venv and run outside the checkout; the edge
command without TensorFlow; the README's Python quickstart, verbatim."""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

from tests import testing
from tests import tiny_run


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip install .` builds, from a copy of what a clean clone holds (the
    build writes into its source folder, which may be read-only, e.g. under Bazel)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(os.path.join(testing.REPO_ROOT, name), source)
    shutil.copytree(os.path.join(testing.REPO_ROOT, "rs_hashing"), source / "rs_hashing",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(source)], check=True, capture_output=True, timeout=300)
    wheels = glob.glob(str(out / "rs_hashing-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_the_library_and_one_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        metadata = archive.read(next(n for n in names if n.endswith("/METADATA"))).decode()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"rs_hashing"}, top_level  # no `train` or `export` in site-packages
    assert "rs_hashing/cli/__init__.py" in names and "rs_hashing/data/resources/rs_caption_synonyms.txt" in names
    assert re.search(r"^rs-hashing = rs_hashing\.cli:main$", entry_points, re.MULTILINE)
    assert "Requires-Dist: numpy>=2.0" in metadata
    for extra in ("serving", "postgres", "test"):
        assert f"Provides-Extra: {extra}" in metadata


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed (--no-deps) whose dependencies come from the
    test interpreter's site-packages through a .pth file: that folder's own .pth files
    (the checkout's editable install) are not processed, so `rs_hashing` can only come
    from the wheel."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "zz_test_dependencies.pth"), "w", encoding="utf-8") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True, timeout=300)
    return venv


def _user_env() -> dict:
    """The environment of a user outside the checkout: no PYTHONPATH (Bazel and IDEs set
    one), TensorFlow's logging left to the command."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}


def _run(venv, *args, cwd, timeout=600):
    return subprocess.run([str(venv / "bin" / "rs-hashing"), *args], cwd=cwd, env=_user_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_installed_command_runs_outside_the_checkout(installed, tmp_path):
    python = str(installed / "bin" / "python")
    where = subprocess.run([python, "-c", "import rs_hashing; print(rs_hashing.__file__)"], cwd=tmp_path,
                           env=_user_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(installed)) and not where.startswith(testing.REPO_ROOT), where
    assert subprocess.run([python, "-c", "import train"], cwd=tmp_path, env=_user_env(),
                          capture_output=True).returncode != 0
    help_text = _run(installed, "train", "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "--bits" in help_text.stdout, help_text.stderr
    demo = _run(installed, "demo", "--preset=smoke", "--workdir=d", "--epochs=2", "--query=a sandy beach",
                cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "query: 'a sandy beach'" in demo.stdout and "| mAP@20 (authors') |" in demo.stdout
    assert os.path.isfile(tmp_path / "d" / "run" / "model.weights.h5")
    assert os.path.isfile(tmp_path / "d" / "run" / "encoders.json")


_BLOCK_HEAVY_IMPORTS = textwrap.dedent("""
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "absl", "keras_hub", "tf_keras",
                                      "tensorflow_text", "faiss"):
                raise ModuleNotFoundError(f"No module named {name!r} (edge install)")
            return None
    sys.meta_path.insert(0, _Block())
""")


def test_edge_encode_runs_without_tensorflow_keras_or_absl(tmp_path):
    """The ground-station install has no TensorFlow, Keras or absl: simulated by a
    sitecustomize that makes importing them fail in the subprocess."""
    from rs_hashing.export import tflite_export  # pylint: disable=import-outside-toplevel

    model = tiny_run.tiny_model(str(tmp_path / "run"))
    tflite = str(tmp_path / "codes.tflite")
    tflite_export.export_tflite(model, tflite, "fp32", text=False)
    images = tiny_run.write_images(str(tmp_path / "images"), count=3)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_BLOCK_HEAVY_IMPORTS)
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{testing.REPO_ROOT}")
    proof = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert proof.returncode != 0 and "edge install" in proof.stderr
    result = subprocess.run([sys.executable, "-m", "rs_hashing.cli", "edge-encode", f"--model={tflite}", *images],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    expected = model.encode_images(images).hex()
    assert [path for path, _ in lines] == images
    assert [code for _, code in lines] == expected


def _quickstart() -> str:
    with open(os.path.join(testing.REPO_ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Python quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_quickstart_runs_verbatim(tmp_path, monkeypatch, capsys):
    code = _quickstart()
    assert len(code.strip().splitlines()) <= 10
    tiny_run.make_tiny_run(str(tmp_path / "runs" / "demo" / "run"), saved_encoders=True)
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        testing.write_image(str(tmp_path / "scenes" / name), color=(40 * i, 200 - 50 * i, 30 + 60 * i), size=20)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md quickstart", "exec"), {})  # pylint: disable=exec-used
    printed = capsys.readouterr().out
    assert "scenes/" in printed
