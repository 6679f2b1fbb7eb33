"""Keras callback recomputing DUCH's binary targets at the end of every epoch."""

from __future__ import annotations

from typing import Any

import keras


class BinaryTargetUpdater(keras.callbacks.Callback):
    """Calls `model.update_binary_targets(data)` in `on_epoch_end`.

    DUCH's quantisation targets B are the sign of the mean of each training item's four
    view codes, refreshed once per epoch; this callback does the refresh during `fit`.

    Args:
        data: what `CrossModalHashingModel.update_binary_targets` accepts: a
            `tf.data.Dataset` of dict batches with `index` (typically the training
            dataset itself, unshuffled or not: rows are placed by `index`), or a dict of
            arrays.
    """

    def __init__(self, data: Any):
        super().__init__()
        self.data = data

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Refreshes the binary targets of the model being fitted."""
        update = getattr(self.model, "update_binary_targets", None)
        if update is None:
            raise ValueError(
                "BinaryTargetUpdater: the model being fitted "
                f"({type(self.model).__name__}) has no update_binary_targets method."
            )
        update(self.data)
