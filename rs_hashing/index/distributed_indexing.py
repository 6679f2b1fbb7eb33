"""Archive encoding beyond one process: an `IndexingPlan` run on Dask workers, resumable,
with codes bit-identical to one process.

    with dask_client(scheduler="tcp://10.0.0.5:8786") as client:   # or workers=8: local
        index = index_plan(model, plan, "archive.index", client)

The driver (this process) sends tasks, never pixels: each task names some windows of a
scene, or some image files (`IndexingTask`). A worker reads them itself, loads the
trained run once per process (`_MODELS`, keyed by run folder, weights fingerprint and
thread count), encodes in the plan's batches and writes a shard (`EncodedTask`) into
`<index>.shards/` beside the index; only a few numbers go back to the driver. The
driver then merges the shards in plan order into the index file, checks the counts
against the plan and prints them, and with a PostgreSQL DSN bulk-loads the codes (with
footprints and acquisition times for scenes) into a `PostgresArchive`.

Resuming. `<index>.shards/plan.json` records the plan; a job run again with the same
plan computes only the tasks without a sealed shard, and a shard folder of another plan
(another run, tiler, task size or sources) is refused. Dask runs a task again when its
worker dies (and up to `retries` times when it raises); a shard is written atomically
and sealed last, so a task run twice writes the same shard twice, never half of one.
The PostgreSQL load resumes too: shards go in, in plan order, in transactions of whole
shards, so the rows a table holds are always a prefix of the job.

Exactness. A worker encodes exactly the batches one process would (see
`indexing_task`), so on the same TensorFlow build, CPU type and thread count per
process (`encode_threads`, recorded in the plan) the codes are bit-identical.

The driver needs no TensorFlow work of its own: it reads file headers to plan, and
shards to merge. With `client=None` the tasks run in this process, one after another,
through the same shards (resumable, one machine).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from rs_hashing.atomic_files import write_json_atomic
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index.encoded_task import EncodedTask
from rs_hashing.index.hamming_index import DEFAULT_APPROXIMATE_ABOVE, HammingIndex
from rs_hashing.index.indexing_plan import IndexingPlan
from rs_hashing.index.indexing_task import IndexingTask

DEFAULT_RETRIES = 3
# Rows per PostgreSQL transaction (whole shards, at least this many): large enough for
# COPY to run at full speed, small enough that a crash redoes little.
POSTGRES_ROWS = 50_000

# Trained runs loaded in this process (a Dask worker keeps them between tasks).
_MODELS: dict[tuple[str, str, int | None], HashingModel] = {}


def shard_folder(index_path: str) -> str:
    """`<index>.shards`: where a job's plan file and shards live."""
    return os.path.abspath(index_path) + ".shards"


def use_encode_threads(threads: int | None) -> None:
    """Sets TensorFlow's threads per op in this process (None: leave the default).

    The thread count changes how a convolution's sums are split, so the last bits of
    the encoder's outputs, so it is part of the plan. It must be set before this process
    runs its first TensorFlow op.

    Raises:
        ValueError: TensorFlow already runs here with another count.
    """
    if threads is None or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads() or "the default number of"
        raise ValueError(f"this process already runs TensorFlow with {current} threads per op; "
                         f"encode_threads={threads} needs a fresh process") from None


def _model_for(task: IndexingTask) -> HashingModel:
    """The task's run, loaded once per process."""
    key = (task.run_dir, task.model, task.encode_threads)
    if key not in _MODELS:
        use_encode_threads(task.encode_threads)
        model = HashingModel.from_run(task.run_dir)
        # As `rs-hashing index` does before encoding: runs whose frozen encoders were
        # never saved (random, seeded) build the same encoders in every process.
        keras.utils.set_random_seed(model.config.train.seed)
        _MODELS[key] = model
    return _MODELS[key]


def encode_shard(task: IndexingTask, folder: str) -> dict[str, Any]:
    """The Dask task: encodes `task` with its run (cached per process) and writes its
    shard into `folder`, unless a sealed shard of it is there already (a task run again
    after its worker died). Returns the shard's summary (counts, timings, worker).

    Raises:
        ValueError: the run folder on this worker holds other weights than the plan's.
        SceneError, DatasetError: pixels that cannot be read.
    """
    written = EncodedTask.written_summary(folder, task.task_id, task.plan)
    if written is not None:
        return written
    return task.encode(_model_for(task)).write(folder).summary()


# ------------------------------------------------------------------ the cluster


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A Dask client: of the scheduler at `scheduler` ("tcp://host:port"), or of a
    local cluster of `workers` processes with one thread each, on 127.0.0.1, closed on
    leaving; None when neither is given.

    Raises:
        ValueError: both given, workers < 1, or no scheduler answers at `scheduler`
            (within 30 s).
    """
    if scheduler and workers:
        raise ValueError("give a scheduler address or a number of local workers, not both")
    if not scheduler and not workers:
        yield None
        return
    import distributed  # pylint: disable=import-outside-toplevel

    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="30s")
        except OSError as e:  # TimeoutError too
            raise ValueError(f"{scheduler}: no Dask scheduler answers there ({e})") from None
        with client:
            yield client
        return
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    # A free port for the dashboard: the default one (8787) may be taken by another cluster.
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as cluster, \
            distributed.Client(cluster) as client:
        yield client


def dashboard_link(client: Any) -> str | None:
    """The cluster's dashboard address, or None when its scheduler runs none."""
    if client is None or "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    return client.dashboard_link + ("" if importlib.util.find_spec("bokeh") else " (its pages need bokeh)")


# ------------------------------------------------------------------ the driver


def _open_shard_folder(folder: str, plan: IndexingPlan) -> None:
    """Creates the shard folder with the plan file, or checks that the folder's plan is
    this one."""
    plan_path = os.path.join(folder, "plan.json")
    if os.path.isfile(plan_path):
        with open(plan_path, encoding="utf-8") as f:
            recorded = json.load(f).get("fingerprint")
        if recorded != plan.fingerprint:
            raise ValueError(
                f"{folder}: holds the shards of another plan ({recorded}), not of this job's plan "
                f"{plan.fingerprint} (another run, tiler, task size or sources); delete the folder to "
                "start over, or index into another file")
        return
    if os.path.isdir(folder) and any(name.endswith((".npz", ".json")) for name in os.listdir(folder)):
        raise ValueError(f"{folder}: holds shards but no plan.json; delete the folder to start over")
    os.makedirs(folder, exist_ok=True)
    write_json_atomic(plan_path, plan.to_json())


def _run_tasks(tasks: list[IndexingTask], folder: str, client: Any, retries: int, bar: tqdm) -> None:
    """Runs `tasks` (on the cluster, or here when client is None), advancing `bar` by
    each task's windows as its shard is sealed."""
    if client is None:
        for task in tasks:
            bar.update(encode_shard(task, folder)["windows"])
        return
    import distributed  # pylint: disable=import-outside-toplevel

    # Keys name the plan and the task: a driver restarted against a long-lived cluster
    # joins a task still running there instead of starting it twice.
    futures = [client.submit(encode_shard, task, folder, key=f"rs-hashing-encode-{task.plan}-{task.task_id}",
                             retries=retries, pure=False) for task in tasks]
    try:
        for future in distributed.as_completed(futures):
            bar.update(future.result()["windows"])
            future.release()
    except BaseException:
        client.cancel(futures)
        raise


def index_plan(model: HashingModel, plan: IndexingPlan, out_path: str, client: Any = None,
               progress: bool = True, retries: int = DEFAULT_RETRIES, postgres: str | None = None,
               postgres_table: str | None = None, keep_shards: bool = False, kind: str = "auto",
               nlist: int | None = None, nprobe: int | None = None,
               approximate_above: int = DEFAULT_APPROXIMATE_ABOVE) -> HammingIndex:
    """Runs the plan's missing tasks (on `client`'s cluster, or here when None), merges
    every shard in plan order into the index at `out_path` and, with `postgres`, loads
    the codes into that PostgreSQL archive. Prints the plan, the shards reused and
    computed, and the count check.

    Args:
        model: the plan's run (used here only when client is None).
        plan: from `IndexingPlan.for_scenes` / `for_images`.
        out_path: index file to write; its shards go to `shard_folder(out_path)`.
        client: a `distributed.Client`, or None.
        progress: a progress bar of tiles (windows) done.
        retries: times Dask runs a task again after it raised.
        postgres: a psycopg DSN: also load the codes (ids = index ids) into its
            `PostgresArchive` (`postgres_table`, default its default table; for scenes
            with footprints and acquisition times, which needs PostGIS).
        keep_shards: keep the shard folder after success (else it is removed).
        kind, nlist, nprobe, approximate_above: passed to `HammingIndex`.

    Returns:
        The saved index; `info["job"]` says how it ran.

    Raises:
        ValueError: a shard folder of another plan; counts that do not match the plan.
        Whatever a task raised after its retries (the shards written so far are kept).
    """
    folder = shard_folder(out_path)
    _open_shard_folder(folder, plan)
    started = time.perf_counter()
    written = {task.task_id: EncodedTask.written_summary(folder, task.task_id, plan.fingerprint)
               for task in plan.tasks}
    todo = [task for task in plan.tasks if written[task.task_id] is None]
    done_windows = sum(summary["windows"] for summary in written.values() if summary is not None)
    print(f"plan {plan.fingerprint}: {plan.total} {'windows' if plan.kind == 'scenes' else 'images'} in "
          f"{len(plan.tasks)} tasks of up to {plan.tiles_per_task}; {len(plan.tasks) - len(todo)} shards "
          f"already written, computing {len(todo)}", flush=True)
    if client is None:
        # This process encodes: with the plan's thread count, and the model it was given.
        use_encode_threads(plan.settings["encode_threads"])
        _MODELS.setdefault((os.path.abspath(model.run_dir), model.fingerprint(),
                            plan.settings["encode_threads"]), model)
    else:
        link = dashboard_link(client)
        workers = len(client.scheduler_info().get("workers", {}))
        print(f"dask: {workers} workers" + (f", dashboard {link}" if link else ""), flush=True)
    with tqdm(total=plan.total, initial=done_windows, desc="tiles" if plan.kind == "scenes" else "images",
              unit="tile" if plan.kind == "scenes" else "img", disable=not progress) as bar:
        _run_tasks(todo, folder, client, retries, bar)
    encoded = [EncodedTask.read(folder, task.task_id, plan.fingerprint) for task in plan.tasks]
    seconds = time.perf_counter() - started
    job = {"tasks": len(plan.tasks), "reused": len(plan.tasks) - len(todo), "computed": len(todo),
           "tiles_per_task": plan.tiles_per_task, "plan": plan.fingerprint,
           "workers": 0 if client is None else len(client.scheduler_info().get("workers", {}))}
    index = plan.merged_index(encoded, seconds=seconds, kind=kind, nlist=nlist, nprobe=nprobe,
                              approximate_above=approximate_above, extra_info={"job": job})
    skipped = sum(result.skipped_nodata for result in encoded)
    print(f"count check: {index.count} codes + {skipped} windows skipped for nodata = the plan's "
          f"{plan.total} of {len(plan.tasks)} tasks, each once", flush=True)
    index.save(out_path)
    if postgres:
        _load_postgres(plan, encoded, folder, postgres, postgres_table, progress)
    if not keep_shards:
        shutil.rmtree(folder, ignore_errors=True)
    return index


# ------------------------------------------------------------------ PostgreSQL


def _load_postgres(plan: IndexingPlan, encoded: list[EncodedTask], folder: str, dsn: str,
                   table: str | None, progress: bool) -> None:
    """Loads every shard, in plan order, into the PostgreSQL archive (ids = index ids),
    in transactions of whole shards of at least `POSTGRES_ROWS` rows; a job run again
    resumes after the transactions already committed."""
    from rs_hashing.index.postgres_archive import DEFAULT_TABLE, PostgresArchive  # pylint: disable=import-outside-toplevel

    table = table or DEFAULT_TABLE
    scenes = plan.kind == "scenes"
    groups, group, rows = [], [], 0
    for result in encoded:
        group.append(result)
        rows += result.count
        if rows >= POSTGRES_ROWS:
            groups.append(group)
            group, rows = [], 0
    if group:
        groups.append(group)
    starts = np.cumsum([0] + [sum(result.count for result in group) for group in groups]).tolist()
    marker_path = os.path.join(folder, "postgres.json")
    marker = {}
    if os.path.isfile(marker_path):
        with open(marker_path, encoding="utf-8") as f:
            marker = json.load(f)
    with PostgresArchive(dsn, bits=int(plan.settings["run"]["bits"]), table=table,
                         geometry=True if scenes else None) as archive:
        present = archive.count()
        # Rows of this job are a prefix of it in whole transactions; anything else is not ours.
        ours = marker.get("plan") == plan.fingerprint and marker.get("table") == table
        if present and (not ours or present not in starts or present < marker.get("rows", 0)):
            raise ValueError(f"PostgreSQL table {table!r} already holds {present} rows that this job did "
                             "not load; load into an empty (or new) table")
        if present:
            print(f"postgres: {present} rows of this job already in {table!r}, loading the rest", flush=True)
        with tqdm(total=starts[-1], initial=present, desc="postgres", unit="row", disable=not progress) as bar:
            for start, group in zip(starts, groups):
                if start < present:
                    continue
                metadata = [item for result in group for item in result.metadata]
                # Marked before the transaction: a crash after its commit leaves the rows
                # and a marker that still claims them for this job.
                write_json_atomic(marker_path, {"plan": plan.fingerprint, "table": table, "rows": start})
                archive.add(np.concatenate([result.packed for result in group]),
                            ids=np.arange(start, start + len(metadata)), metadata=metadata,
                            footprints=[item["footprint"] for item in metadata] if scenes else None,
                            times=[item["acquired"] for item in metadata] if scenes else None)
                bar.update(len(metadata))
    print(f"postgres: {starts[-1]} rows of this job in {table!r}", flush=True)
