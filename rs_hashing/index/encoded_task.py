"""The codes and metadata of one encoded `IndexingTask`, and its shard on disk.

A shard is two files in the job's shard folder (`<index>.shards/`), both written
atomically (`rs_hashing.atomic_files`), codes first:

    <task_id>.npz    codes: packed uint8 [n, K/8]
    <task_id>.json   plan fingerprint, task id, counts, metadata of the n items, the
                     SHA-256 of the packed codes, timings and the worker

The JSON is the shard's seal: a shard whose JSON is there is complete (a worker killed
while writing leaves at most a stray temporary file, or codes without a seal, which the
next run writes again), and `read` checks the codes against the digest it records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
from typing import Any

import numpy as np

from rs_hashing.atomic_files import atomic_open, savez_atomic


def _digest(packed: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(packed, np.uint8).tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class EncodedTask:
    """What a task gave.

    Attributes:
        task_id: the task's id in its plan.
        plan: the plan's fingerprint.
        packed: the codes, packed uint8 [n, K/8], in window (or file) order.
        metadata: one dict per code (`Tile.metadata`, or the image item).
        windows: windows (or image files) handled, kept or not.
        skipped_nodata: windows skipped for too little valid data.
        seconds: time spent reading and preprocessing ("read"), in the encoder
            ("encode") and, once written, writing the codes ("write").
        worker: "host:pid" of the process that encoded it.
    """

    task_id: str
    plan: str
    packed: np.ndarray
    metadata: list[dict[str, Any]]
    windows: int
    skipped_nodata: int = 0
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    worker: str = dataclasses.field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def __post_init__(self):
        if len(self.packed) != len(self.metadata):
            raise ValueError(f"task {self.task_id}: {len(self.packed)} codes but {len(self.metadata)} "
                             "metadata entries")
        if len(self.metadata) + self.skipped_nodata != self.windows:
            raise ValueError(f"task {self.task_id}: {len(self.metadata)} tiles and {self.skipped_nodata} "
                             f"skipped do not add up to its {self.windows} windows")

    @property
    def count(self) -> int:
        """Codes (tiles or images) held."""
        return len(self.metadata)

    def summary(self) -> dict[str, Any]:
        """Counts, timings and worker, without codes or metadata: what a Dask task
        returns to the driver."""
        return {"task_id": self.task_id, "windows": self.windows, "tiles": self.count,
                "skipped_nodata": self.skipped_nodata, "seconds": dict(self.seconds), "worker": self.worker}

    # ------------------------------------------------------------------ shards

    @staticmethod
    def paths(folder: str, task_id: str) -> tuple[str, str]:
        """(codes .npz, seal .json) of a task's shard in `folder`."""
        return os.path.join(folder, f"{task_id}.npz"), os.path.join(folder, f"{task_id}.json")

    def write(self, folder: str) -> "EncodedTask":
        """Writes the shard (codes, then the seal) atomically; returns self with the
        write time in `seconds`."""
        codes_path, seal_path = self.paths(folder, self.task_id)
        started = time.perf_counter()
        savez_atomic(codes_path, codes=np.ascontiguousarray(self.packed, np.uint8))
        seconds = dict(self.seconds, write=round(time.perf_counter() - started, 4))
        seal = {"plan": self.plan, "task_id": self.task_id, "windows": self.windows, "tiles": self.count,
                "skipped_nodata": self.skipped_nodata, "codes_sha256": _digest(self.packed),
                "seconds": seconds, "worker": self.worker, "metadata": self.metadata}
        # Keys keep their order (no sort_keys), so that merged metadata is the single-process
        # path's byte for byte.
        with atomic_open(seal_path, "w", encoding="utf-8") as f:
            json.dump(seal, f, ensure_ascii=False, separators=(",", ":"))
        return dataclasses.replace(self, seconds=seconds)

    @staticmethod
    def _seal(folder: str, task_id: str, plan: str) -> dict[str, Any] | None:
        _, seal_path = EncodedTask.paths(folder, task_id)
        if not os.path.isfile(seal_path):
            return None
        try:
            with open(seal_path, encoding="utf-8") as f:
                seal = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{seal_path}: unreadable shard record ({e}); delete it to encode the "
                             "task again") from None
        if seal.get("plan") != plan or seal.get("task_id") != task_id:
            raise ValueError(f"{seal_path}: a shard of another plan ({seal.get('plan')}, task "
                             f"{seal.get('task_id')}), not of this job's plan {plan}; delete the shard "
                             "folder to start over")
        return seal

    @staticmethod
    def written_summary(folder: str, task_id: str, plan: str) -> dict[str, Any] | None:
        """The summary of the task's shard if it is written (sealed), else None.

        Raises:
            ValueError: the shard there belongs to another plan, or is unreadable.
        """
        seal = EncodedTask._seal(folder, task_id, plan)
        if seal is None:
            return None
        return {key: seal[key] for key in ("task_id", "windows", "tiles", "skipped_nodata", "seconds",
                                           "worker")}

    @classmethod
    def read(cls, folder: str, task_id: str, plan: str) -> "EncodedTask":
        """The task's shard.

        Raises:
            FileNotFoundError: the shard is not (completely) written.
            ValueError: it belongs to another plan, or its codes do not match its record.
        """
        seal = cls._seal(folder, task_id, plan)
        codes_path, seal_path = cls.paths(folder, task_id)
        if seal is None:
            raise FileNotFoundError(f"{seal_path}: shard of task {task_id} is not written")
        with np.load(codes_path) as arrays:
            packed = arrays["codes"]
        if _digest(packed) != seal["codes_sha256"]:
            raise ValueError(f"{codes_path}: codes do not match {seal_path} (SHA-256); delete both to "
                             "encode the task again")
        return cls(task_id=task_id, plan=plan, packed=packed, metadata=seal["metadata"],
                   windows=seal["windows"], skipped_nodata=seal["skipped_nodata"],
                   seconds=seal["seconds"], worker=seal["worker"])
