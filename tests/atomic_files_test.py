"""Atomic writes: the old content survives a failed write, no temporary file is left."""

import json
import os

import numpy as np
import pytest

from rs_hashing import atomic_files


def _listing(folder):
    return sorted(os.listdir(folder))


def test_json_bytes_and_arrays_round_trip(tmp_path):
    atomic_files.write_json_atomic(str(tmp_path / "a.json"), {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    atomic_files.write_bytes_atomic(str(tmp_path / "b.bin"), b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_files.save_array_atomic(str(tmp_path / "c.npy"), np.arange(5))
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), np.arange(5))
    atomic_files.savez_atomic(str(tmp_path / "d.npz"), x=np.ones(3))
    np.testing.assert_array_equal(np.load(tmp_path / "d.npz")["x"], np.ones(3))
    assert _listing(tmp_path) == ["a.json", "b.bin", "c.npy", "d.npz"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = str(tmp_path / "record.json")
    atomic_files.write_json_atomic(path, {"version": 1})
    with pytest.raises(TypeError):
        atomic_files.write_json_atomic(path, {"version": object()})  # not JSON
    assert json.loads(open(path, encoding="utf-8").read()) == {"version": 1}
    with pytest.raises(RuntimeError):
        with atomic_files.atomic_open(path, "w", encoding="utf-8") as f:
            f.write('{"version": 2')
            raise RuntimeError("killed half way")
    assert json.loads(open(path, encoding="utf-8").read()) == {"version": 1}
    assert _listing(tmp_path) == ["record.json"]


def test_temporary_names_keep_the_suffix_writers_need(tmp_path):
    with atomic_files.atomic_path(str(tmp_path / "model.weights.h5")) as tmp:
        assert tmp.endswith(".weights.h5") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "wb").close()
    assert _listing(tmp_path) == ["model.weights.h5"]
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_files.atomic_open(str(tmp_path / "x"), "a"):
            pass
