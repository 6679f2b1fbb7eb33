r"""The search service under load: 32 clients typing queries for 30 s against
`rs-hashing serve` over a 1M-code archive, on loopback.

    nice -n 10 python -m benchmarks.service_load_benchmark [--run_dir=runs/demo/run] \
        [--codes=1000000] [--clients=32] [--seconds=30] [--out=/tmp/service_load.json]

1. A 1,000,000-item exact index of the run's code length is written to a temporary
   folder: clustered random codes (`--clusters` centroid codes; each archive code a copy
   of a random centroid with each bit flipped with probability 1/8, as in
   benchmarks/index_benchmark.py) with a file name and class per item, recorded as made
   with the run (its weights fingerprint), so the service accepts it.
2. The real command, `python -m rs_hashing.cli serve --run_dir=... --index=...`, starts
   in its own process on a free loopback port (no access log); the benchmark waits for
   /api/health.
3. `--clients` concurrent clients (asyncio + httpx, one keep-alive connection each) send
   `GET /api/search?text=...&k=20` for `--warmup_seconds` (not counted), then for
   `--seconds`: each picks one of 60 varied sentences at random and sends the next query
   as soon as the answer arrives. Every answer must be 200 with k hits.
4. Printed: requests/s, latency p50/p90/p99/max as the clients saw it (and the
   service's own time, the answers' `milliseconds`), errors, and the server's resident
   memory (VmRSS) after the warm-up and after the run, against `--max_growth_mib`.

The exit status is 1 when any request failed or memory grew beyond the bound. Client
and server share this machine's cores: on a small machine the figures are a floor.
"""

import asyncio
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from rs_hashing import config as config_lib
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index.hamming_index import HammingIndex

flags.DEFINE_string("run_dir", "runs/demo/run", "Trained run to serve (`rs-hashing demo` makes runs/demo/run).")
flags.DEFINE_integer("codes", 1_000_000, "Archive size (items).")
flags.DEFINE_integer("clusters", 2000, "Centroid codes of the clustered archive.")
flags.DEFINE_integer("clients", 32, "Concurrent clients.")
flags.DEFINE_integer("seconds", 30, "Measured load duration.")
flags.DEFINE_integer("warmup_seconds", 5, "Load before measuring (not counted).")
flags.DEFINE_integer("k", 20, "Results per query.")
flags.DEFINE_integer("max_growth_mib", 64, "Bound on the server's resident-memory growth over the run.")
flags.DEFINE_integer("start_timeout", 600, "Seconds the server may take to start.")
flags.DEFINE_string("out", None, "Also write the results here as JSON.")
FLAGS = flags.FLAGS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("beach", "forest", "farmland", "marsh", "sea", "town")
_SUBJECTS = ("a sandy beach", "open sea", "dense forest", "farmland with square fields", "a tidal marsh",
             "a small town", "a river", "a lagoon shore", "green fields", "a road")
_PLACES = ("next to the water", "near a forest", "along the coast", "with some houses", "under thin clouds",
           "beside farmland")
SENTENCES = tuple(f"{subject} {place}" for subject in _SUBJECTS for place in _PLACES)  # 60 sentences


def log(message: str) -> None:
    print(message, flush=True)


def clustered_codes(count: int, bits: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Packed codes uint8 [count, bits/8] and each code's cluster: a random centroid
    code with every bit flipped with probability 1/8 (the AND of three random bits)."""
    rng = np.random.default_rng(seed)
    width = bits // 8
    centroids = rng.integers(0, 256, size=(clusters, width), dtype=np.uint8)
    cluster = rng.integers(0, clusters, size=count)
    codes = centroids[cluster]
    for start in range(0, count, 1 << 20):
        rows = slice(start, min(count, start + (1 << 20)))
        shape = (rows.stop - rows.start, width)
        flips = rng.integers(0, 256, size=shape, dtype=np.uint8)
        flips &= rng.integers(0, 256, size=shape, dtype=np.uint8)
        flips &= rng.integers(0, 256, size=shape, dtype=np.uint8)
        codes[rows] ^= flips
    return codes, cluster


def write_archive(path: str, model: HashingModel) -> float:
    """Writes the benchmark's index; returns the seconds it took."""
    started = time.perf_counter()
    codes, cluster = clustered_codes(FLAGS.codes, model.bits, FLAGS.clusters)
    metadata = [{"file": f"archive/{i // 1000:04d}/img_{i:07d}.png", "class": CLASSES[c % len(CLASSES)]}
                for i, c in enumerate(cluster.tolist())]
    index = HammingIndex(model.bits, kind="flat",
                         info={"run": os.path.abspath(model.run_dir), "model": model.fingerprint(),
                               "source": f"service_load_benchmark: {FLAGS.codes:,} clustered random codes"})
    index.add(codes, metadata=metadata)
    index.save(path)
    return time.perf_counter() - started


def resident_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index_path: str, port: int, log_path: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    with open(log_path, "w", encoding="utf-8") as log_file:
        return subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-m", "rs_hashing.cli", "serve", f"--run_dir={FLAGS.run_dir}",
             f"--index={index_path}", f"--port={port}", "--host=127.0.0.1", "--noaccess_log"],
            cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)


async def wait_for_health(base: str, server: subprocess.Popen) -> dict:
    import httpx  # pylint: disable=import-outside-toplevel

    deadline = time.monotonic() + FLAGS.start_timeout
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}")
            try:
                response = await client.get(base + "/api/health")
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the server did not answer /api/health within {FLAGS.start_timeout} s")


async def load(base: str, seconds: float, seed: int) -> dict:
    """`--clients` clients sending typed queries for `seconds`; latencies in ms."""
    import httpx  # pylint: disable=import-outside-toplevel

    latencies, service_ms, errors = [], [], []
    stop_at = time.monotonic() + seconds

    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as session:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    response = await session.get("/api/search", params={"text": rng.choice(SENTENCES), "k": FLAGS.k})
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                body = response.json()
                if len(body["hits"]) != FLAGS.k:
                    errors.append(f"{len(body['hits'])} hits instead of {FLAGS.k}")
                    continue
                latencies.append(elapsed)
                service_ms.append(body["milliseconds"])

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(FLAGS.clients)))
    return {"latencies": latencies, "service_ms": service_ms, "errors": errors,
            "wall_seconds": time.perf_counter() - started}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {name: round(float(np.percentile(array, q)), 2) for name, q in
            (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}


def main(argv):
    del argv
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    if not os.path.isfile(os.path.join(FLAGS.run_dir, "model.weights.h5")):
        raise SystemExit(f"error: {FLAGS.run_dir}: no trained run (make one with "
                         "`rs-hashing demo --workdir=runs/demo`, or pass --run_dir)")
    bits = config_lib.load_config(FLAGS.run_dir).model.bits
    results = {"codes": FLAGS.codes, "bits": bits, "clients": FLAGS.clients, "seconds": FLAGS.seconds,
               "k": FLAGS.k, "cores": os.cpu_count(), "run_dir": os.path.abspath(FLAGS.run_dir)}
    with tempfile.TemporaryDirectory(prefix="rs_hashing_service_load_") as folder:
        model = HashingModel.from_run(FLAGS.run_dir)
        index_path = os.path.join(folder, "archive.index")
        results["index_write_seconds"] = round(write_archive(index_path, model), 1)
        results["index_mib"] = round(os.path.getsize(index_path) / 2 ** 20, 1)
        del model
        log(f"index: {FLAGS.codes:,} codes of {bits} bits, {results['index_mib']} MiB, written in "
            f"{results['index_write_seconds']} s")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server_log = os.path.join(folder, "server.log")
        started = time.perf_counter()
        server = start_server(index_path, port, server_log)
        try:
            health = asyncio.run(wait_for_health(base, server))
            results["server_start_seconds"] = round(time.perf_counter() - started, 1)
            assert health["index"]["count"] == FLAGS.codes, health["index"]
            log(f"server: pid {server.pid} on {base}, up in {results['server_start_seconds']} s")
            warmup = asyncio.run(load(base, FLAGS.warmup_seconds, seed=1))
            rss_before = resident_mib(server.pid)
            run = asyncio.run(load(base, FLAGS.seconds, seed=2))
            rss_after = resident_mib(server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)
            if server.returncode not in (0, -signal.SIGINT):
                with open(server_log, encoding="utf-8") as f:
                    log(f.read()[-4000:])
    requests = len(run["latencies"])
    growth = rss_after - rss_before
    results.update({
        "warmup_requests": len(warmup["latencies"]), "warmup_errors": len(warmup["errors"]),
        "requests": requests, "requests_per_second": round(requests / run["wall_seconds"], 1),
        "latency_ms": percentiles(run["latencies"]), "service_ms": percentiles(run["service_ms"]),
        "errors": len(run["errors"]), "error_examples": run["errors"][:5],
        "rss_mib_before": round(rss_before, 1), "rss_mib_after": round(rss_after, 1),
        "rss_growth_mib": round(growth, 1), "max_growth_mib": FLAGS.max_growth_mib,
        "memory_ok": growth <= FLAGS.max_growth_mib,
    })
    log(f"\n== {FLAGS.clients} clients, {FLAGS.seconds} s of typed queries (k={FLAGS.k}) over "
        f"{FLAGS.codes:,} codes, {os.cpu_count()} cores shared by clients and server")
    log(f"requests: {requests:,} ({results['requests_per_second']} /s), errors: {results['errors']}")
    log(f"latency ms (client): {results['latency_ms']}")
    log(f"time in the service ms: {results['service_ms']}")
    log(f"server resident memory: {results['rss_mib_before']} MiB after warm-up, {results['rss_mib_after']} MiB "
        f"after the run (growth {results['rss_growth_mib']} MiB, bound {FLAGS.max_growth_mib} MiB: "
        f"{'ok' if results['memory_ok'] else 'EXCEEDED'})")
    if FLAGS.out:
        with open(FLAGS.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    if results["errors"] or results["warmup_errors"] or not results["memory_ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
