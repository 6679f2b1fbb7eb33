"""One unit of archive encoding: a group of windows of one scene, or a group of image files.

An `IndexingPlan` cuts a job into these; `encode(model)` reads the task's pixels itself
(the tiler for windows, the image pipeline for files), encodes them in batches and
returns an `EncodedTask`. A task carries only where the pixels are (a scene's file
names and grid, window offsets, image paths), never pixels, so it is a few kilobytes
however large the tiles: a Dask worker reads its own windows.

Batches. The tiles of windows [k*B, (k+1)*B) of a scene (B the batch size), those that
hold enough data, are one encoder call; image files [k*B, (k+1)*B) of the plan are one.
A task spans a whole number of these groups (the plan's task size is a multiple of B),
so the encoder sees the same batches however the plan is cut into tasks and whichever
process runs them: its float outputs, and so the codes, are bit-identical (batch
composition changes the last bits of a network's outputs on CPU).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.scene_reader import SceneReader
from rs_hashing.geo.tiler import Tiler
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index.encoded_task import EncodedTask

# Resolved percentile contracts of this process, by scene and contract: every task of a
# scene needs the one contract, and its decimated read of the whole scene is costly.
_CONTRACTS: dict[tuple, Radiometry] = {}
_MAX_CONTRACTS = 256


@dataclasses.dataclass(frozen=True)
class _WindowsTiler(Tiler):
    """`Tiler` over some windows of a scene, with each scene's contract resolved once
    per process. `Tiler.tiles` takes its windows from `windows()` and its contract from
    `radiometry_for()`, so reading, nodata skipping, the contract and the metadata stay
    the tiler's own code."""

    only: tuple[tuple[int, int, int, int], ...] = ()

    def windows(self, scene: Scene) -> tuple[list[tuple[int, int, int, int]], int]:
        return list(self.only), 0

    def radiometry_for(self, scene: Scene, reader: SceneReader) -> Radiometry:
        if self.radiometry.mode == "fixed":
            return super().radiometry_for(scene, reader)
        key = (scene.scene_id, scene.sources, scene.band_indexes, self.radiometry)
        if key not in _CONTRACTS:
            if len(_CONTRACTS) >= _MAX_CONTRACTS:
                _CONTRACTS.clear()
            _CONTRACTS[key] = super().radiometry_for(scene, reader)
        return _CONTRACTS[key]


@dataclasses.dataclass(frozen=True)
class IndexingTask:
    """Some windows of one scene (`scene`, `tiler`, `windows`) or some image files
    (`root`, `items`) to encode, and the run to encode them with.

    Attributes:
        task_id: the task's position in its plan, zero-padded ("000012"); shards are
            named after it.
        plan: the plan's fingerprint (its shards record it).
        run_dir: the run folder, absolute; every worker reads it at this path.
        model: the run's weights fingerprint (`HashingModel.fingerprint`); a worker
            that loads other weights refuses the task.
        batch_size: tiles or images per encoder call.
        encode_threads: TensorFlow threads per op in the encoding process (None: its
            default); part of the numeric recipe, so recorded with the plan.
        scene, tiler, windows: a scene task's scene, the plan's tiler and the windows
            (col_off, row_off, width, height), a run of the scene's row-major windows
            that starts at a multiple of `batch_size`.
        root, items: an image task's folder and per-image metadata (each with "file",
            relative to root), a run of the plan's items that starts at a multiple of
            `batch_size`.
    """

    task_id: str
    plan: str
    run_dir: str
    model: str
    batch_size: int
    encode_threads: int | None = None
    scene: Scene | None = None
    tiler: Tiler | None = None
    windows: tuple[tuple[int, int, int, int], ...] = ()
    root: str | None = None
    items: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"IndexingTask {self.task_id}: batch_size must be >= 1, got {self.batch_size}")
        if (self.scene is None) == (self.root is None):
            raise ValueError(f"IndexingTask {self.task_id}: give a scene (with tiler and windows) or an "
                             "image root (with items), not both or neither")
        if self.scene is not None and self.tiler is None:
            raise ValueError(f"IndexingTask {self.task_id}: a scene task needs the plan's tiler")

    @property
    def kind(self) -> str:
        """"scenes" or "images"."""
        return "scenes" if self.scene is not None else "images"

    @property
    def size(self) -> int:
        """Windows (scene task) or image files (image task) to handle."""
        return len(self.windows) if self.scene is not None else len(self.items)

    def describe(self) -> dict[str, Any]:
        """What the plan file records of the task (no pixels, no per-item metadata)."""
        if self.scene is not None:
            return {"id": self.task_id, "scene": self.scene.scene_id, "windows": len(self.windows),
                    "first_window": list(self.windows[0]) if self.windows else None}
        return {"id": self.task_id, "images": len(self.items),
                "first_file": self.items[0]["file"] if self.items else None}

    def encode(self, model: HashingModel) -> EncodedTask:
        """Reads, preprocesses and encodes the task's tiles or images with `model`.

        Raises:
            ValueError: `model` holds other weights than the plan's.
            SceneError: a scene file that cannot be read any more.
            DatasetError: image files that are missing or cannot be decoded.
        """
        if model.fingerprint() != self.model:
            raise ValueError(f"{model.run_dir}: holds weights {model.fingerprint()}, but the plan was made "
                             f"with weights {self.model}; every process must read the same run folder")
        started = time.perf_counter()
        if self.scene is not None:
            packed, metadata, skipped, encode_seconds = self._encode_windows(model)
        else:
            paths = [os.path.join(self.root, item["file"]) for item in self.items]
            packed = model.encode_images(paths, batch_size=self.batch_size).packed
            metadata, skipped = [dict(item) for item in self.items], 0
            encode_seconds = time.perf_counter() - started
        total = time.perf_counter() - started
        return EncodedTask(task_id=self.task_id, plan=self.plan, packed=packed, metadata=metadata,
                           windows=self.size, skipped_nodata=skipped,
                           seconds={"read": round(total - encode_seconds, 4),
                                    "encode": round(encode_seconds, 4)})

    def _encode_windows(self, model: HashingModel) -> tuple[np.ndarray, list[dict], int, float]:
        """(packed codes, tile metadata, windows skipped for nodata, seconds in the encoder)."""
        fields = {field.name: getattr(self.tiler, field.name) for field in dataclasses.fields(Tiler)}
        tiling = _WindowsTiler(**fields, only=tuple(self.windows)).tiles(self.scene)
        group_of = {window: position // self.batch_size for position, window in enumerate(self.windows)}
        parts, metadata, batch, group = [np.zeros((0, model.bits // 8), np.uint8)], [], [], None
        encode_seconds = 0.0

        def flush():
            nonlocal encode_seconds
            started = time.perf_counter()
            parts.append(model.encode_images(batch, batch_size=self.batch_size).packed)
            encode_seconds += time.perf_counter() - started
            batch.clear()

        for tile in tiling:
            tile_group = group_of[tuple(tile.window)]
            if batch and tile_group != group:
                flush()
            group = tile_group
            batch.append(tile.pixels)
            metadata.append(tile.metadata())
        if batch:
            flush()
        return np.concatenate(parts), metadata, tiling.report.skipped_nodata, encode_seconds
