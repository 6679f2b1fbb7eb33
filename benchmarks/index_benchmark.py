r"""Archive search speed, recall and memory: HammingIndex against bare faiss and NumPy.

    nice -n 10 python -m benchmarks.index_benchmark [--sizes=1000000,10000000] \
        [--out=/tmp/index_benchmark.json]

Every query is timed on one core (faiss.omp_set_num_threads(1)); index building also
runs on one core. Codes are 64-bit, packed. Two kinds of archive:

* clustered: `--clusters` centroid codes drawn uniformly at random; each archive code
  (and each query) is a copy of a random centroid with every bit flipped independently
  with probability 1/8 (8 bits on average; two codes of one cluster differ by ~14 bits,
  codes of different clusters by ~32), as real archives cluster by scene type;
* uniform: independent uniformly random codes (no structure at all).

For each kind and size it prints queries/s of the exact index against bare faiss
`IndexBinaryFlat` and NumPy `bitwise_count` brute force on the same queries, bytes per
item, and for the approximate (IVF) index its build time, bytes per item and, per
nprobe, queries/s and recall@10 against the exact top 10 (by id, ties by id; and
tie-aware: the share of returned items at most as far as the exact 10th). Then the
end-to-end latency of a typed query (MiniLM text encoder + a 64-bit hash head with
random weights -> code -> exact top 20 over 1M clustered codes), p50 and p99, and the
PostgreSQL archive's query time at 1M codes (a server started with
tools/start_test_postgres.sh unless --postgres_dsn is given). Throughput figures are the
best of --repeats rounds, which is robust to other work on a shared machine.
"""

import json
import os
import resource
import subprocess
import tempfile
import time

import faiss
import numpy as np
from absl import app, flags

from rs_hashing.index.hamming_index import HammingIndex

flags.DEFINE_list("sizes", ["1000000", "10000000"], "Archive sizes (codes).")
flags.DEFINE_list("kinds", ["clustered", "uniform"], "Archive kinds: clustered, uniform.")
flags.DEFINE_integer("clusters", 2000, "Centroid codes of the clustered archives.")
flags.DEFINE_integer("queries", 2000, "Queries timed on the approximate index.")
flags.DEFINE_integer("exact_query_seconds", 2, "About this long per exact-search round.")
flags.DEFINE_integer("recall_queries", 500, "Queries whose exact top 10 is the reference.")
flags.DEFINE_list("nprobes", ["1", "2", "4", "8", "16"], "IVF nprobe values to sweep.")
flags.DEFINE_integer("repeats", 3, "Timing rounds (best kept).")
flags.DEFINE_bool("end_to_end", True, "Time typed queries with the real MiniLM encoder.")
flags.DEFINE_bool("postgres", True, "Time the PostgreSQL archive at 1M codes.")
flags.DEFINE_string("postgres_dsn", None, "Use this server instead of starting one.")
flags.DEFINE_string("out", None, "Also write the results here as JSON.")
FLAGS = flags.FLAGS

BITS = 64
K = 10
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message: str) -> None:
    print(message, flush=True)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def random_words(rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniformly random 64-bit words."""
    return rng.integers(0, 256, size=(n, 8), dtype=np.uint8).view(np.uint64).ravel()


def make_codes(kind: str, n: int, seed: int, centroids: np.ndarray) -> np.ndarray:
    """Packed uint8 [n, 8] codes of the given kind (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        words = random_words(rng, n)
    else:
        words = centroids[rng.integers(0, len(centroids), size=n)]
        for start in range(0, n, 1 << 20):
            stop = min(n, start + (1 << 20))
            # AND of three random words: each bit is 1 with probability 1/8.
            flips = random_words(rng, stop - start)
            flips &= random_words(rng, stop - start)
            flips &= random_words(rng, stop - start)
            words[start:stop] ^= flips
    return words.view(np.uint8).reshape(n, BITS // 8)


def best_rate(function, count: int, repeats: int) -> float:
    """Best items/s of `repeats` calls of function() that each handle `count` items."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return count / best


def numpy_top_k(words: np.ndarray, query_words: np.ndarray, k: int) -> np.ndarray:
    """Brute force with NumPy: popcount of XOR, then the k smallest (ties by index)."""
    results = []
    for query in query_words:
        distances = np.bitwise_count(words ^ query)
        candidates = np.argpartition(distances, k)[:k + 1]
        kth = np.partition(distances[candidates], k - 1)[k - 1]
        tied = np.flatnonzero(distances <= kth)
        results.append(tied[np.lexsort((tied, distances[tied]))][:k])
    return np.array(results)


def recall(found_ids, found_distances, exact_ids, exact_distances) -> tuple[float, float]:
    by_id = np.mean([len(set(a) & set(b)) / K for a, b in zip(found_ids, exact_ids)])
    tie_aware = np.mean((found_distances >= 0) & (found_distances <= exact_distances[:, -1:]))
    return float(by_id), float(tie_aware)


def exact_queries_for(size: int) -> int:
    # About exact_query_seconds per round at ~2.5 ns per code and query.
    return int(max(5, min(2000, FLAGS.exact_query_seconds / (2.5e-9 * size))))


def bench_archive(kind: str, size: int, centroids: np.ndarray) -> dict:
    result = {"kind": kind, "size": size}
    started = time.perf_counter()
    codes = make_codes(kind, size, seed=size, centroids=centroids)
    queries = make_codes(kind, max(FLAGS.queries, FLAGS.recall_queries), seed=size + 1,
                         centroids=centroids)
    log(f"\n== {kind} codes, {size:,} x {BITS} bits (made in {time.perf_counter() - started:.1f} s)")

    bare = faiss.IndexBinaryFlat(BITS)
    bare.add(codes)
    before = resident_bytes()
    exact = HammingIndex(BITS, kind="flat")
    exact.add(codes)
    rss_per_item = (resident_bytes() - before) / size
    n_exact = exact_queries_for(size)
    flat_queries = queries[:n_exact]
    rates = {"bare": [], "wrapper": []}
    searches = {"bare": lambda: bare.search(flat_queries, K),
                "wrapper": lambda: exact.search(flat_queries, K)}
    # Interleaved, in alternating order, so that both see the same machine load.
    for round_no in range(max(FLAGS.repeats, 7)):
        for name in (("bare", "wrapper") if round_no % 2 == 0 else ("wrapper", "bare")):
            rates[name].append(best_rate(searches[name], n_exact, 1))
    bare_qps, wrapper_qps = max(rates["bare"]), max(rates["wrapper"])
    # Each round times both back to back under about the same load: the median of the
    # per-round ratios is steadier than a ratio of bests on a busy machine.
    pair_ratio = float(np.median(np.array(rates["wrapper"]) / np.array(rates["bare"])))
    bare_ids = bare.search(flat_queries, K)[1]
    wrapper_ids = exact.search(flat_queries, K)[0]
    words = codes.view(np.uint64).ravel()
    query_words = flat_queries.view(np.uint64).ravel()
    n_numpy = max(3, n_exact // 10)
    numpy_qps = best_rate(lambda: numpy_top_k(words, query_words[:n_numpy], K), n_numpy,
                          FLAGS.repeats)
    numpy_ids = numpy_top_k(words, query_words[:n_numpy], K)
    result["exact"] = {
        "queries": n_exact, "bare_faiss_qps": round(bare_qps, 1),
        "hamming_index_qps": round(wrapper_qps, 1),
        "ratio_to_bare": round(wrapper_qps / bare_qps, 3),
        "ratio_to_bare_median_of_rounds": round(pair_ratio, 3),
        "numpy_bitwise_count_qps": round(numpy_qps, 1),
        "same_results_as_faiss": bool(np.array_equal(bare_ids, wrapper_ids)),
        "same_results_as_numpy": bool(np.array_equal(numpy_ids, wrapper_ids[:n_numpy])),
        "bytes_per_item": exact.nbytes / size, "rss_bytes_per_item": round(rss_per_item, 2),
    }
    single = []
    for q in range(min(50, n_exact)):
        t = time.perf_counter()
        exact.search(flat_queries[q:q + 1], K)
        single.append(time.perf_counter() - t)
    result["exact"]["single_query_ms_p50"] = round(1e3 * float(np.median(single)), 3)
    log(f"exact: HammingIndex {wrapper_qps:,.1f} q/s, bare IndexBinaryFlat {bare_qps:,.1f} q/s "
        f"(ratio of bests {wrapper_qps / bare_qps:.3f}, median of {len(rates['bare'])} "
        f"back-to-back rounds {pair_ratio:.3f}), NumPy bitwise_count {numpy_qps:,.1f} q/s; "
        f"identical results: faiss {result['exact']['same_results_as_faiss']}, "
        f"NumPy {result['exact']['same_results_as_numpy']}; {exact.nbytes / size:.2f} B/item "
        f"(RSS +{rss_per_item:.2f} B/item); one query {result['exact']['single_query_ms_p50']} ms")

    recall_queries = queries[:FLAGS.recall_queries]
    started = time.perf_counter()
    exact_ids, exact_distances = exact.search(recall_queries, K)
    log(f"reference top {K} of {len(recall_queries)} queries in {time.perf_counter() - started:.1f} s")
    del bare, exact

    before = resident_bytes()
    approximate = HammingIndex(BITS, kind="ivf")
    started = time.perf_counter()
    approximate.add(codes)
    approximate.build()
    build_seconds = time.perf_counter() - started
    rss_per_item = (resident_bytes() - before) / size
    result["ivf"] = {"nlist": approximate.nlist, "build_seconds": round(build_seconds, 1),
                     "bytes_per_item": round(approximate.nbytes / size, 2),
                     "rss_bytes_per_item": round(rss_per_item, 2), "default_nprobe": approximate.nprobe,
                     "sweep": []}
    log(f"IVF: nlist {approximate.nlist}, built in {build_seconds:.1f} s (one core), "
        f"{approximate.nbytes / size:.2f} B/item (RSS +{rss_per_item:.2f} B/item)")
    timed = queries[:FLAGS.queries]
    for nprobe in [int(n) for n in FLAGS.nprobes]:
        approximate.nprobe = nprobe
        qps = best_rate(lambda: approximate.search(timed, K), len(timed), FLAGS.repeats)
        by_id, tie_aware = recall(*approximate.search(recall_queries, K), exact_ids, exact_distances)
        result["ivf"]["sweep"].append({"nprobe": nprobe, "qps": round(qps), "recall_at_10": by_id,
                                       "recall_at_10_tie_aware": tie_aware})
        log(f"  nprobe {nprobe:>3}: {qps:>9,.0f} q/s  recall@10 {by_id:.4f} (ties by id), "
            f"{tie_aware:.4f} (tie-aware)")
    return result


def end_to_end(centroids: np.ndarray) -> dict:
    """Typed sentence -> MiniLM -> 64-bit text head -> exact top 20 over 1M codes."""
    from rs_hashing import config as config_lib  # pylint: disable=import-outside-toplevel
    from rs_hashing.atomic_files import write_json_atomic  # pylint: disable=import-outside-toplevel
    from rs_hashing.hashing_model import HashingModel  # pylint: disable=import-outside-toplevel
    from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel  # pylint: disable=import-outside-toplevel

    config = config_lib.apply_overrides(config_lib.get_preset("demo"), {"bits": BITS})
    workdir = tempfile.mkdtemp(prefix="index_benchmark_run_")
    # Random head weights: latency does not depend on what the head has learnt.
    model = CrossModalHashingModel(image_dim=1280, text_dim=384, bits=BITS,
                                   hidden_dim=config.model.hidden_dim, num_train=1, seed=0)
    config_lib.save_config(config, workdir)
    model.save_weights(os.path.join(workdir, "model.weights.h5"))
    write_json_atomic(os.path.join(workdir, "model_config.json"), model.get_config())
    started = time.perf_counter()
    encoder = HashingModel.from_run(workdir)
    encoder.encode_texts(["warm-up sentence"])
    load_seconds = time.perf_counter() - started
    index = HammingIndex(BITS, kind="flat")
    index.add(make_codes("clustered", 1_000_000, seed=7, centroids=centroids))
    subjects = ["a river", "dense forest", "a harbour with boats", "farm fields", "a beach",
                "an airport runway", "a residential area", "a desert", "a lake", "a stadium"]
    places = ["next to a road", "near green trees", "with white buildings", "in the mountains",
              "beside the sea", "under clouds", "with a bridge", "in the morning", "from above",
              "with many cars"]
    sentences = [f"{s} {p} {i}" for i in range(3) for s in subjects for p in places][:250]
    for sentence in sentences[:10]:
        index.search(encoder.encode_texts([sentence]).codes, 20)
    total, encode, search = [], [], []
    for sentence in sentences[10:]:
        t0 = time.perf_counter()
        codes = encoder.encode_texts([sentence]).codes
        t1 = time.perf_counter()
        index.search(codes, 20)
        t2 = time.perf_counter()
        total.append(t2 - t0)
        encode.append(t1 - t0)
        search.append(t2 - t1)
    ms = lambda values, q: round(1e3 * float(np.percentile(values, q)), 2)  # noqa: E731
    result = {"queries": len(total), "encoder_load_seconds": round(load_seconds, 1),
              "p50_ms": ms(total, 50), "p99_ms": ms(total, 99),
              "text_to_code_p50_ms": ms(encode, 50), "top20_search_p50_ms": ms(search, 50)}
    log(f"\n== end to end over 1,000,000 clustered codes: typed sentence -> MiniLM -> hash head "
        f"-> exact top 20, {len(total)} queries: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
        f"(text -> code p50 {result['text_to_code_p50_ms']} ms, search p50 "
        f"{result['top20_search_p50_ms']} ms; encoder loaded in {load_seconds:.1f} s)")
    return result


def postgres(centroids: np.ndarray) -> dict:
    from rs_hashing.index.postgres_archive import PostgresArchive  # pylint: disable=import-outside-toplevel

    script = os.path.join(REPO_ROOT, "tools", "start_test_postgres.sh")
    dsn, started_here = FLAGS.postgres_dsn, False
    if not dsn:
        started = subprocess.run(["bash", script], capture_output=True, text=True, timeout=900)
        if started.returncode != 0:
            log(f"\n== PostgreSQL: skipped, no server could be started ({started.stderr.strip()[-300:]})")
            return {"skipped": started.stderr.strip()[-300:]}
        dsn, started_here = started.stdout.strip().splitlines()[-1], True
    try:
        codes = make_codes("clustered", 1_000_000, seed=7, centroids=centroids)
        queries = make_codes("clustered", 20, seed=8, centroids=centroids)
        with PostgresArchive(dsn, bits=BITS, table="index_benchmark_1m") as archive:
            archive.drop()
        with PostgresArchive(dsn, bits=BITS, table="index_benchmark_1m") as archive:
            t = time.perf_counter()
            archive.add(codes)
            archive._connection.execute("ANALYZE index_benchmark_1m")
            archive._connection.commit()
            load_seconds = time.perf_counter() - t
            archive.search(queries[:2], K)  # warm the table into shared buffers
            times, found = [], []
            for query in queries:
                t = time.perf_counter()
                found.append(archive.search(query[None], K))
                times.append(time.perf_counter() - t)
            index = HammingIndex(BITS, kind="flat")
            index.add(codes)
            faiss_ids, faiss_distances = index.search(queries, K)
            agree = all(np.array_equal(ids[0], faiss_ids[i]) and
                        np.array_equal(distances[0], faiss_distances[i])
                        for i, (ids, distances) in enumerate(found))
            server = archive._connection.info.server_version
            archive.drop()
        result = {"server_version": server, "load_seconds": round(load_seconds, 1),
                  "query_ms_p50": round(1e3 * float(np.median(times)), 1),
                  "query_ms_max": round(1e3 * float(np.max(times)), 1),
                  "same_results_as_faiss": bool(agree), "queries": len(times)}
        log(f"\n== PostgreSQL {server // 10000} at 1,000,000 codes (bit(64), ORDER BY "
            f"bit_count(code # q), id LIMIT {K}): loaded in {load_seconds:.1f} s, query p50 "
            f"{result['query_ms_p50']} ms (max {result['query_ms_max']} ms) over {len(times)} "
            f"queries; same results as faiss: {agree}")
        return result
    finally:
        if started_here:
            subprocess.run(["bash", script, "--stop", dsn], capture_output=True, timeout=120)


def main(argv):
    del argv
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    centroids = random_words(np.random.default_rng(12345), FLAGS.clusters)
    results = {"bits": BITS, "k": K, "threads": 1, "cores": os.cpu_count(),
               "load_average": os.getloadavg(), "clusters": FLAGS.clusters,
               "cluster_bit_flip_probability": 0.125, "archives": []}
    for size in [int(s) for s in FLAGS.sizes if s]:
        for kind in FLAGS.kinds:
            results["archives"].append(bench_archive(kind, size, centroids))
    if FLAGS.end_to_end:
        results["end_to_end"] = end_to_end(centroids)
    if FLAGS.postgres:
        results["postgres"] = postgres(centroids)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["load_average_end"] = os.getloadavg()
    log(f"\ntotal {results['seconds']} s; load average at start {results['load_average']}, "
        f"at end {results['load_average_end']} ({os.cpu_count()} cores)")
    if FLAGS.out:
        with open(FLAGS.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
