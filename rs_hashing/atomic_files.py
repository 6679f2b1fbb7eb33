"""Atomic file writes: a reader (or a killed writer) never sees half a file.

Every artefact the package writes (JSON records, .npy/.npz arrays, weight files, index
files, TFLite models) goes through here: the content is written to a temporary file in
the destination's folder, flushed, and moved over the destination with `os.replace`,
which is atomic on one file system. If writing fails (a full disk, a crash, an
exception) the destination keeps its previous content and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, BinaryIO, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; on leaving without an error it replaces
    `path`. For writers that want a file name (h5py, numpy.savez, converters).

    The temporary name keeps `path`'s suffix, because some writers pick the format
    from it (`np.save` appends `.npy` otherwise, Keras wants `.weights.h5`).
    """
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    suffix = next((s for s in (".weights.h5", ".npy", ".npz") if base.endswith(s)),
                  os.path.splitext(base)[1])
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", encoding: str | None = None) -> Iterator[BinaryIO]:
    """`open(path, mode)` that only replaces `path` when the block finishes cleanly;
    the data is flushed to disk first."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str, values: Any) -> None:
    """Writes `values` as indented, key-sorted JSON (with a final newline) atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")


def save_array_atomic(path: str, array: np.ndarray) -> None:
    """Writes an .npy file atomically."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def savez_atomic(path: str, **arrays: np.ndarray) -> None:
    """Writes a compressed .npz file atomically."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
