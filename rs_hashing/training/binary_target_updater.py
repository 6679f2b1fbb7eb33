"""Keras callback refreshing DUCH's binary targets at the end of every epoch."""

from __future__ import annotations

from typing import Any

import keras


class BinaryTargetUpdater(keras.callbacks.Callback):
    """Refreshes the binary targets of the model being fitted in `on_epoch_end`.

    DUCH's quantisation targets B are the sign of the mean of each training item's four
    view codes, refreshed once per epoch. Without `data` they come from the codes of the
    epoch's own training steps (`model.refresh_binary_targets()`, the authors' way and
    free); with `data` from an extra inference-mode pass over it
    (`model.update_binary_targets(data)`).

    Args:
        data: None, or what `CrossModalHashingModel.update_binary_targets` accepts: a
            `tf.data.Dataset` of dict batches with `index`, or a dict of arrays.
    """

    def __init__(self, data: Any = None):
        super().__init__()
        self.data = data

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Refreshes the binary targets of the model being fitted."""
        name = "refresh_binary_targets" if self.data is None else "update_binary_targets"
        update = getattr(self.model, name, None)
        if update is None:
            raise ValueError(
                f"BinaryTargetUpdater: the model being fitted ({type(self.model).__name__}) has no "
                f"{name} method."
            )
        if self.data is None:
            update()
        else:
            update(self.data)
