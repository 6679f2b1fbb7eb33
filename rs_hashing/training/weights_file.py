"""Keras weights files (.weights.h5) written atomically and safely on a full disk: the
file is made in memory, because HDF5 ends the process when a write fails.
"""

from __future__ import annotations

import io
import os
import tempfile

import keras

from rs_hashing.atomic_files import write_bytes_atomic


def weights_file_bytes(model: keras.Model) -> bytes:
    """The bytes of `model.save_weights`' .weights.h5 file, made in memory.

    HDF5 does not survive a failed write: on a full disk `save_weights` ends the process
    with a segmentation fault, leaving a half-written file. Made in memory and written by
    Python, a full disk is an OSError and the atomic write cleans up after itself.
    """
    # pylint: disable=import-outside-toplevel,protected-access
    try:  # What Model.save_weights calls, given a file object instead of a path.
        from keras.src.saving import saving_lib
        store_class, save_state = saving_lib.H5IOStore, saving_lib._save_state
    except (ImportError, AttributeError):  # Another Keras: through a file, as save_weights does.
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.weights.h5")
            model.save_weights(path)
            with open(path, "rb") as f:
                return f.read()
    buffer = io.BytesIO()
    store = store_class(buffer, mode="w")
    try:
        save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    finally:
        store.close()
    return buffer.getvalue()


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """`model.save_weights(path)`, atomically and safe on a full disk (see `weights_file_bytes`)."""
    write_bytes_atomic(path, weights_file_bytes(model))
