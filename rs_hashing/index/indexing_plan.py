"""What an indexing job encodes, cut into tasks, with a fingerprint; and the merge of the
tasks' codes into one index.

    plan = IndexingPlan.for_scenes(model, ["items.json"], Tiler(size=256), bands=("B04", "B03", "B02"))
    encoded = [task.encode(model) for task in plan.tasks]      # or on Dask workers
    index = plan.merged_index(encoded)                         # in plan order, counted

Both `rs-hashing index` paths go through here: one process runs the tasks in order, a
Dask cluster runs them anywhere (`distributed_indexing`); the tiles, their order, the
encoder batches and so the codes are the same (see `indexing_task` on batches).

Tasks. A scene task is a run of up to `tiles_per_task` consecutive windows (row-major,
`Tiler.windows`) of one scene; an image task a run of up to `tiles_per_task` files of
the sorted item list. `tiles_per_task` is a multiple of the batch size (rounded up) and
256 by default: a task is then seconds of encoder work (about 50-70 ms a tile for
EfficientNet-Lite0 on one CPU core), against about a millisecond of scheduler overhead
per task and a few kilobytes of task description; a lost task costs seconds to redo;
its tiles (at most 256 x 256 x 256 x 3 bytes, 50 MB) and its shard stay small; a task
reads neighbouring rows of one scene, so the COG blocks it fetches are its own; and ten
million tiles make 40 000 tasks, which one scheduler keeps up with.

Fingerprint. SHA-256 (16 hex digits) of everything the codes and the task cut depend
on: the run (weights fingerprint, recorded encoders, feature settings, seed), the batch
size, the task size, the encoder thread count, the tiler settings, bands and nodata,
and the sources (each scene's id, files with their sizes and modification times,
grid and band indexes; for images the root and the file list). Shards record it, and a
job refuses the shards of another plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rs_hashing.errors import DatasetError
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.tiler import Tiler
from rs_hashing.geo.tiling_report import TilingReport
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index.encoded_task import EncodedTask
from rs_hashing.index.hamming_index import DEFAULT_APPROXIMATE_ABOVE, HammingIndex
from rs_hashing.index.indexing_task import IndexingTask

DEFAULT_TILES_PER_TASK = 256
PLAN_FORMAT = 1


def tiles_per_task_for(tiles_per_task: int | None, batch_size: int) -> int:
    """`tiles_per_task` (default `DEFAULT_TILES_PER_TASK`) rounded up to a multiple of
    `batch_size`, so that no encoder batch straddles two tasks.

    Raises:
        ValueError: a value below 1.
    """
    wanted = DEFAULT_TILES_PER_TASK if tiles_per_task is None else tiles_per_task
    if wanted < 1 or batch_size < 1:
        raise ValueError(f"tiles_per_task and batch_size must be >= 1, got {wanted} and {batch_size}")
    return math.ceil(wanted / batch_size) * batch_size


def _run_record(model: HashingModel) -> dict[str, Any]:
    return {"weights": model.fingerprint(), "encoders": model.recorded_encoders(),
            "features": dataclasses.asdict(model.config.features), "seed": model.config.train.seed,
            "bits": model.bits}


def _file_record(path: str) -> list:
    status = os.stat(path)
    return [os.path.abspath(path), status.st_size, status.st_mtime_ns]


def _fingerprint(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class IndexingPlan:
    """The tasks of one indexing job (see the module docstring).

    Attributes:
        kind: "scenes" or "images".
        fingerprint: of `settings` (16 hex digits).
        settings: what the codes and the cut depend on (JSON).
        tasks: in plan order; merged in this order, ids are positions.
        info: the index info both paths record (run, model, sources, tiler, ...).
        skipped_edge: partial edge positions of all scenes (never tasks).
        scene_count: scenes found (0 for images).
        sources: the sources as given (for messages).
    """

    kind: str
    fingerprint: str
    settings: dict[str, Any]
    tasks: tuple[IndexingTask, ...]
    info: dict[str, Any]
    skipped_edge: int = 0
    scene_count: int = 0
    sources: tuple[str, ...] = ()

    # ------------------------------------------------------------------ making plans

    @classmethod
    def for_scenes(cls, model: HashingModel, sources: Sequence[str], tiler: Tiler,
                   bands: Sequence[int | str] | None = None, nodata: float | None = None,
                   batch_size: int | None = None, tiles_per_task: int | None = None,
                   encode_threads: int | None = None) -> "IndexingPlan":
        """The plan of tiling GeoTIFF/COG scenes (files, folders, STAC Item or
        ItemCollection JSON) with `tiler`. Reads file headers only.

        Raises:
            SceneError: a source that cannot be read as scenes (the message names it).
            DatasetError: a scene id that occurs more than once.
            ValueError: metres on a scene with non-square pixels, a bad task size.
        """
        found = [(source, scene) for source in sources for scene in Scene.discover(source, bands, nodata)]
        ids = [scene.scene_id for _, scene in found]
        repeated = sorted({scene_id for scene_id in ids if ids.count(scene_id) > 1})
        if repeated:
            raise DatasetError(f"scene ids occur more than once: {', '.join(repeated)} (each scene once, please)")
        batch_size = batch_size or model.config.features.encode_batch_size
        per_task = tiles_per_task_for(tiles_per_task, batch_size)
        grids = [tiler.windows(scene) for _, scene in found]
        settings = {
            "format": PLAN_FORMAT, "kind": "scenes", "run": _run_record(model), "batch_size": batch_size,
            "tiles_per_task": per_task, "encode_threads": encode_threads,
            "tiler": {"size": tiler.size, "stride": tiler.stride, "unit": tiler.unit,
                      "min_valid": tiler.min_valid, "radiometry": tiler.radiometry.to_dict(),
                      "densify": tiler.densify, "gdal_cache_mb": tiler.gdal_cache_mb},
            "bands": list(bands or []), "nodata": nodata,
            "scenes": [{"source": os.path.abspath(source), "scene_id": scene.scene_id,
                        "files": [_file_record(path) for path in scene.unique_sources],
                        "band_indexes": list(scene.band_indexes), "assets": scene.assets,
                        "grid": [scene.crs, list(scene.transform)[:6], scene.width, scene.height],
                        "nodata": scene.nodata, "dtype": scene.dtype, "acquired": scene.acquired,
                        "windows": len(windows)}
                       for (source, scene), (windows, _) in zip(found, grids)],
        }
        fingerprint = _fingerprint(settings)
        run_dir = os.path.abspath(model.run_dir)
        tasks = []
        for (_, scene), (windows, _) in zip(found, grids):
            for start in range(0, len(windows), per_task):
                tasks.append(IndexingTask(
                    task_id="", plan=fingerprint, run_dir=run_dir, model=model.fingerprint(),
                    batch_size=batch_size, encode_threads=encode_threads, scene=scene, tiler=tiler,
                    windows=tuple(tuple(window) for window in windows[start:start + per_task])))
        info = {"run": run_dir, "model": model.fingerprint(), "source": "scenes " + ", ".join(sources),
                "image_size": model.image_size,
                "scenes": {scene.scene_id: {"source": os.path.abspath(source), "bands": list(bands or []),
                                            "nodata": nodata} for source, scene in found},
                "tiler": {"size": tiler.size, "stride": tiler.stride, "unit": tiler.unit,
                          "min_valid": tiler.min_valid}}
        return cls(kind="scenes", fingerprint=fingerprint, settings=settings, tasks=_numbered(tasks),
                   info=info, skipped_edge=sum(skipped for _, skipped in grids), scene_count=len(found),
                   sources=tuple(sources))

    @classmethod
    def for_images(cls, model: HashingModel, root: str, items: Sequence[Mapping[str, Any]],
                   source: str = "", batch_size: int | None = None, tiles_per_task: int | None = None,
                   encode_threads: int | None = None) -> "IndexingPlan":
        """The plan of encoding image files (`items`, each with "file" relative to
        `root`, as `archive_indexing.files_items` lists them); ids are their positions.

        Raises:
            DatasetError: no items.
            ValueError: a bad task size.
        """
        if not items:
            raise DatasetError(f"{root}: no images to index")
        batch_size = batch_size or model.config.features.encode_batch_size
        per_task = tiles_per_task_for(tiles_per_task, batch_size)
        root = os.path.abspath(root)
        items = tuple(dict(item) for item in items)
        listing = hashlib.sha256(json.dumps(items, sort_keys=True).encode("utf-8")).hexdigest()
        settings = {"format": PLAN_FORMAT, "kind": "images", "run": _run_record(model), "batch_size": batch_size,
                    "tiles_per_task": per_task, "encode_threads": encode_threads, "root": root,
                    "images": len(items), "items_sha256": listing}
        fingerprint = _fingerprint(settings)
        run_dir = os.path.abspath(model.run_dir)
        tasks = [IndexingTask(task_id="", plan=fingerprint, run_dir=run_dir, model=model.fingerprint(),
                              batch_size=batch_size, encode_threads=encode_threads, root=root,
                              items=items[start:start + per_task])
                 for start in range(0, len(items), per_task)]
        info = {"run": run_dir, "model": model.fingerprint(), "image_root": root, "source": source,
                "image_size": model.image_size}
        return cls(kind="images", fingerprint=fingerprint, settings=settings, tasks=_numbered(tasks),
                   info=info, sources=(root,))

    # ------------------------------------------------------------------ what it holds

    @property
    def total(self) -> int:
        """Windows (scenes) or image files of all tasks."""
        return sum(task.size for task in self.tasks)

    @property
    def tiles_per_task(self) -> int:
        return int(self.settings["tiles_per_task"])

    def to_json(self) -> dict[str, Any]:
        """The plan file's content: fingerprint, settings and every task (no per-item
        metadata)."""
        return {"fingerprint": self.fingerprint, "kind": self.kind, "total": self.total,
                "settings": self.settings, "tasks": [task.describe() for task in self.tasks]}

    # ------------------------------------------------------------------ merging

    def merged_index(self, encoded: Sequence[EncodedTask], seconds: float | None = None,
                     kind: str = "auto", nlist: int | None = None, nprobe: int | None = None,
                     approximate_above: int = DEFAULT_APPROXIMATE_ABOVE,
                     extra_info: Mapping[str, Any] | None = None) -> HammingIndex:
        """One index of the tasks' codes in plan order (ids are positions), after a
        count check: each task exactly once, each of its windows handled, tiles +
        skipped = windows, no tile twice.

        Args:
            encoded: one `EncodedTask` per task, in plan order.
            seconds: the encoding time to record (`info["encode_seconds"]`).
            kind, nlist, nprobe, approximate_above: passed to `HammingIndex`.
            extra_info: more info entries (how the job ran).

        Raises:
            ValueError: a task missing, repeated, out of order or of another plan, or
                counts that do not add up.
            DatasetError: no tile at all (scenes).
        """
        got = [(result.plan, result.task_id) for result in encoded]
        wanted = [(self.fingerprint, task.task_id) for task in self.tasks]
        if got != wanted:
            missing = sorted({task_id for _, task_id in wanted} - {task_id for _, task_id in got})
            raise ValueError(f"plan {self.fingerprint}: {len(got)} encoded tasks do not match its "
                             f"{len(wanted)} tasks in order (missing: {', '.join(missing[:5]) or 'none'})")
        for task, result in zip(self.tasks, encoded):
            if result.windows != task.size:
                raise ValueError(f"task {task.task_id}: handled {result.windows} of its {task.size} windows")
        metadata = [item for result in encoded for item in result.metadata]
        skipped_nodata = sum(result.skipped_nodata for result in encoded)
        if self.kind == "scenes":
            if len({item["tile_id"] for item in metadata}) != len(metadata):
                raise ValueError(f"plan {self.fingerprint}: a tile occurs more than once")
            if not metadata:
                raise DatasetError(f"{', '.join(self.sources)}: no tile holds enough data "
                                   f"({skipped_nodata} skipped for nodata)")
        if len(metadata) + skipped_nodata != self.total:
            raise ValueError(f"plan {self.fingerprint}: {len(metadata)} tiles + {skipped_nodata} skipped "
                             f"!= its {self.total} windows")
        info = dict(self.info)
        if self.kind == "scenes":
            info["tiling"] = TilingReport(scenes=self.scene_count, tiles=len(metadata),
                                          skipped_nodata=skipped_nodata,
                                          skipped_edge=self.skipped_edge).to_dict()
        if seconds is not None:
            info["encode_seconds"] = round(seconds, 2)
        info.update(extra_info or {})
        index = HammingIndex(int(self.settings["run"]["bits"]), kind=kind, approximate_above=approximate_above,
                             nlist=nlist, nprobe=nprobe, info=info)
        bytes_per_code = int(self.settings["run"]["bits"]) // 8
        index.add(np.concatenate([np.zeros((0, bytes_per_code), np.uint8)] + [r.packed for r in encoded]),
                  metadata=metadata)
        return index


def _numbered(tasks: list[IndexingTask]) -> tuple[IndexingTask, ...]:
    width = max(6, len(str(len(tasks))))
    return tuple(dataclasses.replace(task, task_id=f"{position:0{width}d}")
                 for position, task in enumerate(tasks))
