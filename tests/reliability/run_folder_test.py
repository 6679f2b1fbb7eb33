"""Faults and hostile input around a run folder: a full disk, features made otherwise, a
finished run re-run with other flags, truncated checkpoints (rs_hashing.training.duch,
run_kit, run_folder, checkpoints).

One tiny finished DUCH run (smoke preset at tests/testing.py's TINY sizes, 2 epochs) is
made once; every test works on its own copy of the folder.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing import config as config_lib
from rs_hashing.errors import FeatureStoreError, RunConflictError, TrainingError
from rs_hashing.hashing_model import HashingModel
from rs_hashing.training import duch, evaluation, run_folder, run_kit
from tests import testing
from tests.training.tiny_store import make_store

EPOCHS = 2
# 32 KiB: more than config.json, metrics.json or codes.npz need, less than the weights
# (about 90 KB of HDF5 for the tiny heads) or either plot.
FILE_SIZE_LIMIT = 32 * 1024


def _flags(data: config_lib.DataConfig, features: str, run_dir: str) -> dict:
    """The config flags of the tiny run, as `rs-hashing train` would be given them."""
    return dict(dataset="karpathy", caption_file=data.caption_file, image_dir=data.image_dir, features=features,
                run_dir=run_dir, bits=testing.TINY["bits"], hidden_dim=testing.TINY["hidden_dim"],
                image_size=testing.TINY["image_size"], sequence_length=testing.TINY["sequence_length"],
                batch_size=testing.TINY["batch_size"], epochs=EPOCHS, learning_rate=3e-3)


def _deterministic():
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()


@pytest.fixture(autouse=True)
def _seeded():
    _deterministic()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run: its folder, config, flags, data and store."""
    _deterministic()
    root = tmp_path_factory.mktemp("run_folder")
    data, features = make_store(root / "data")
    flag_values = _flags(data, features, str(root / "finished"))
    config = config_lib.config_from_flags("smoke", flag_values)
    duch.train(config, verbose=0)
    return {"root": root, "data": data, "features": features, "flags": flag_values, "config": config,
            "workdir": config.train.run_dir}


def _copy_run(finished, tmp_path, name="run") -> str:
    """A copy of the finished run folder (a moved folder: it resumes as its original)."""
    workdir = str(tmp_path / name)
    shutil.copytree(finished["workdir"], workdir)
    return workdir


def _snapshot(folder: str) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes."""
    files = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def _reloaded_codes_match(workdir: str, config: config_lib.Config) -> None:
    """The run loads (HashingModel.from_run) and its heads give the codes of codes.npz."""
    model = HashingModel.from_run(workdir)
    prepared = run_kit.prepare(config)
    reloaded = evaluation.encode_sets(model.heads, evaluation.retrieval_features(prepared.store, prepared.split))
    codes = np.load(os.path.join(workdir, "codes.npz"))
    for key in evaluation.CODE_KEYS:
        np.testing.assert_array_equal(reloaded[key], codes[key], err_msg=key)


def _limit_file_size():
    """In the child: files cannot grow past FILE_SIZE_LIMIT, and a write that would
    fails with EFBIG instead of SIGXFSZ killing the process (an ignored signal stays
    ignored across exec)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


# Re-runs a finished run on a full disk: with more epochs (refused), then unchanged,
# which evaluates the run again and writes its artefacts again (fails on the full disk).
_FULL_DISK_CHILD = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from rs_hashing import config as config_lib
    from rs_hashing.errors import RunConflictError
    from rs_hashing.training import duch

    workdir = sys.argv[1]
    config = config_lib.load_config(workdir)
    longer = config_lib.apply_overrides(config, {"epochs": config.train.epochs + 2})
    try:
        duch.train(longer, workdir=workdir, verbose=0)
        print("LONGER ACCEPTED")
    except RunConflictError as e:
        print("LONGER REFUSED:", e)
    try:
        duch.train(config, workdir=workdir, verbose=0)
        print("SAME WRITTEN")
    except OSError as e:
        print("SAME FAILED:", e)
""")


def test_full_disk_leaves_the_finished_run_whole(finished, tmp_path):
    workdir = _copy_run(finished, tmp_path)
    before = _snapshot(workdir)
    assert len(before["model.weights.h5"]) > FILE_SIZE_LIMIT  # Else the disk would not fill.

    child = subprocess.run([sys.executable, "-c", _FULL_DISK_CHILD, workdir], cwd=testing.REPO_ROOT,
                           preexec_fn=_limit_file_size, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]  # No segmentation fault (HDF5 on a full disk).
    assert f"LONGER REFUSED: {os.path.join(workdir, 'config.json')}" in child.stdout, child.stdout
    assert f"train.epochs: {EPOCHS} -> {EPOCHS + 2}" in child.stdout
    assert "SAME FAILED:" in child.stdout and "File too large" in child.stdout, child.stdout

    # Every file as before (weights, metrics, codes, config, checkpoints, plots), none
    # added (no temporary file left), and the run loads with the codes it recorded.
    after = _snapshot(workdir)
    assert sorted(after) == sorted(before)
    for name in before:
        assert after[name] == before[name], name
    with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
        assert json.load(f)["epochs"] == EPOCHS
    _reloaded_codes_match(workdir, finished["config"])


def test_features_made_with_other_encoder_settings_are_refused(finished, tmp_path):
    store = str(tmp_path / "features")
    shutil.copytree(finished["features"], store)
    manifest_path = os.path.join(store, "manifest.json")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    features = finished["config"].features
    made = {name: getattr(features, name) for name in run_folder.FEATURE_SETTINGS}
    made.update(image_size=224, sequence_length=64)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(dict(manifest, **made), f)
    workdir = str(tmp_path / "run")
    config = config_lib.config_from_flags("smoke", dict(finished["flags"], features=store, run_dir=workdir))

    with pytest.raises(FeatureStoreError) as error:
        duch.train(config, verbose=0)
    message = str(error.value)
    assert message.startswith(f"{manifest_path}: ")
    assert "image_size: features made at 224, config says 16" in message
    assert "sequence_length: features made at 64, config says 8" in message
    assert "image_encoder" not in message and "\n" not in message
    assert not os.path.exists(workdir)  # Refused before anything was written.

    # The same settings pass; so does another radiometric contract only when recorded the same.
    made.update(image_size=16, sequence_length=8)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(dict(manifest, **made, radiometry={"mode": "fixed", "range16": [0.0, 10000.0]}), f)
    with pytest.raises(FeatureStoreError, match=r"radiometry\.range16: features made with \[0\.0, 10000\.0\], "
                                                r"config says \[0\.0, 3000\.0\]"):
        run_kit.prepare(config)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(dict(manifest, **made), f)
    run_kit.prepare(config)


def test_finished_run_rerun_with_other_bits_is_refused_and_left_unchanged(finished, tmp_path):
    workdir = _copy_run(finished, tmp_path)
    before = _snapshot(workdir)
    config = config_lib.config_from_flags("smoke", dict(finished["flags"], run_dir=workdir, bits=32))
    with pytest.raises(RunConflictError) as error:
        duch.train(config, verbose=0)
    message = str(error.value)
    assert f"{os.path.join(workdir, 'config.json')}: the folder holds a run of another configuration " \
           "(model.bits: 8 -> 32); " in message
    assert "--overwrite" in message and "\n" not in message
    assert _snapshot(workdir) == before  # config.json bytes included.

    # The command: one line, exit status 1, the folder still as it was.
    flag_args = [f"--{name}={value}" for name, value in dict(finished["flags"], run_dir=workdir, bits=32).items()]
    result = testing.run_module("rs_hashing.cli", "train", "--preset=smoke", *flag_args, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "model.bits: 8 -> 32" in last_line, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert _snapshot(workdir) == before


def test_overwrite_starts_a_fresh_run_and_keeps_other_files(finished, tmp_path):
    workdir = _copy_run(finished, tmp_path)
    with open(os.path.join(workdir, "notes.txt"), "w", encoding="utf-8") as f:
        f.write("mine")
    os.makedirs(os.path.join(workdir, "checkpoints", "mine"))
    leftover = os.path.join(workdir, ".metrics.json.x1y2.tmp.json")  # From a killed atomic write.
    with open(leftover, "w", encoding="utf-8") as f:
        f.write("{")
    config = config_lib.config_from_flags("smoke", dict(finished["flags"], run_dir=workdir, bits=16))
    results = duch.train(config, verbose=0, overwrite=True)
    assert results["resumed_from_epoch"] == 0
    assert config_lib.load_config(workdir) == config
    assert HashingModel.from_run(workdir).heads.bits == 16
    assert np.load(os.path.join(workdir, "codes.npz"))["query_image"].shape[1] == 16
    assert len(run_kit.read_history(os.path.join(workdir, "history.csv"))["loss"]) == EPOCHS
    events = [name for _, _, names in os.walk(os.path.join(workdir, "tensorboard")) for name in names]
    assert len(events) == 1, events  # The old run's TensorBoard log is gone.
    assert not os.path.exists(leftover)
    with open(os.path.join(workdir, "notes.txt"), encoding="utf-8") as f:
        assert f.read() == "mine"
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "mine"))


def test_run_files_without_a_config_are_refused(finished, tmp_path):
    workdir = _copy_run(finished, tmp_path)
    os.remove(os.path.join(workdir, "config.json"))
    with pytest.raises(RunConflictError, match=r"holds run files \(.*metrics\.json.*checkpoints.*\) but no "
                                               r"config\.json"):
        run_folder.start_run(finished["config"], workdir)
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path):
    workdir = _copy_run(finished, tmp_path)
    checkpoints = os.path.join(workdir, "checkpoints")
    latest = f"ckpt-{EPOCHS}.data-00000-of-00001"
    _truncate(os.path.join(checkpoints, latest))

    with pytest.warns(UserWarning, match=rf"checkpoint ckpt-{EPOCHS} \(.*{latest}.*\) in .*checkpoints is "
                                         rf"unreadable \(.+\); moved aside .*resuming from the earlier "
                                         rf"checkpoint ckpt-{EPOCHS - 1}"):
        results = duch.train(finished["config"], workdir=workdir, verbose=0)
    # Resumed from the earlier epoch, and ended as the uninterrupted run did.
    assert results["resumed_from_epoch"] == EPOCHS - 1
    expected, codes = (np.load(os.path.join(folder, "codes.npz")) for folder in (finished["workdir"], workdir))
    for key in evaluation.CODE_KEYS:
        np.testing.assert_array_equal(codes[key], expected[key], err_msg=key)
    history = run_kit.read_history(os.path.join(workdir, "history.csv"))
    np.testing.assert_allclose(history["loss"],
                               run_kit.read_history(os.path.join(finished["workdir"], "history.csv"))["loss"],
                               rtol=1e-5)
    assert os.path.isfile(os.path.join(checkpoints, "corrupt-" + latest))
    assert tf.train.latest_checkpoint(checkpoints) == os.path.join(checkpoints, f"ckpt-{EPOCHS}")
    _reloaded_codes_match(workdir, finished["config"])


def test_no_readable_checkpoint_is_a_one_line_error(finished, tmp_path):
    workdir = _copy_run(finished, tmp_path)
    checkpoints = os.path.join(workdir, "checkpoints")
    for epoch in (EPOCHS - 1, EPOCHS):
        _truncate(os.path.join(checkpoints, f"ckpt-{epoch}.data-00000-of-00001"))
    before = _snapshot(workdir)
    with pytest.raises(TrainingError) as error:
        duch.train(finished["config"], workdir=workdir, verbose=0)
    message = str(error.value)
    assert message.startswith(f"no usable checkpoint in {checkpoints}: ckpt-{EPOCHS} (")
    assert f"ckpt-{EPOCHS}.data-00000-of-00001" in message and f"ckpt-{EPOCHS - 1}.data-00000-of-00001" in message
    assert "\n" not in message
    assert _snapshot(workdir) == before
