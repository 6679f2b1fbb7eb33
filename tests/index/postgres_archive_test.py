"""The PostgreSQL archive against a real server (started by tools/start_test_postgres.sh,
or the one named by RS_HASHING_TEST_POSTGRES_DSN); skipped, with the reason, when none
can be started."""

import os
import subprocess

import numpy as np
import pytest

from rs_hashing import metrics
from rs_hashing.index.hamming_index import HammingIndex
from rs_hashing.index.postgres_archive import PostgresArchive, bit_strings
from tests import testing

START_SCRIPT = os.path.join(testing.REPO_ROOT, "tools", "start_test_postgres.sh")
DSN_VARIABLE = "RS_HASHING_TEST_POSTGRES_DSN"


@pytest.fixture(scope="module")
def dsn():
    pytest.importorskip("psycopg", reason='psycopg 3 is not installed (pip install "psycopg[binary]")')
    given = os.environ.get(DSN_VARIABLE)
    if given:
        yield given
        return
    try:
        started = subprocess.run(["bash", START_SCRIPT], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"no PostgreSQL server: {START_SCRIPT} could not run ({e})")
    if started.returncode != 0 or not started.stdout.strip():
        reason = " | ".join(started.stderr.strip().splitlines()[-3:])
        pytest.skip(f"no PostgreSQL server could be started by {START_SCRIPT}: {reason}")
    server = started.stdout.strip().splitlines()[-1]
    yield server
    subprocess.run(["bash", START_SCRIPT, "--stop", server], capture_output=True, timeout=120)


@pytest.fixture
def archive(dsn, request):
    table = "test_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[:50]
    opened = []

    def open_archive(bits, **kwargs):
        kwargs.setdefault("table", table)
        archive = PostgresArchive(dsn, bits=bits, **kwargs)
        opened.append(archive)
        return archive

    yield open_archive
    for archive in opened:
        if not archive._connection.closed:
            archive.drop()
            archive.close()


def _random_codes(rng, n, bits):
    return np.where(rng.random((n, bits)) < 0.5, -1, 1).astype(np.int8)


def test_bit_strings_follow_the_code_order():
    assert bit_strings(np.array([[1, -1, -1, -1, -1, -1, 1, 1]]), 8) == ["10000011"]
    assert bit_strings(np.array([[0b10000011, 1]], np.uint8), 16) == ["1000001100000001"]


@pytest.mark.parametrize("bits", [16, 64])
def test_postgres_and_faiss_agree_including_ties(archive, bits):
    rng = np.random.default_rng(bits)
    # 16 bits over 300 codes: many equal distances, so the tie order is tested.
    database, queries = _random_codes(rng, 300, bits), _random_codes(rng, 12, bits)
    ids = rng.permutation(300) * 7 + 3
    shared = archive(bits)
    shared.add(database[:100], ids=ids[:100])
    shared.add(database[100:], ids=ids[100:])
    index = HammingIndex(bits, kind="flat")
    index.add(database, ids=ids)
    for k in (1, 10, 40):
        pg_ids, pg_distances = shared.search(queries, k)
        faiss_ids, faiss_distances = index.search(queries, k)
        np.testing.assert_array_equal(pg_ids, faiss_ids)
        np.testing.assert_array_equal(pg_distances, faiss_distances)
    # And both equal brute force with ties by id.
    distances = metrics.hamming_distance(queries, database)
    order = np.lexsort((np.broadcast_to(ids, distances.shape), distances), axis=-1)[:, :10]
    np.testing.assert_array_equal(shared.search(queries, 10)[0], ids[order])
    assert shared.count() == 300


def test_metadata_round_trip_and_default_ids(archive):
    shared = archive(8)
    codes = np.array([[1] * 8, [-1] * 8, [1] * 4 + [-1] * 4], np.int8)
    tricky = 'tab\there, "quotes", back\\slash, new\nline, ünïcode'
    assert shared.add(codes[:2], metadata=[{"file": "a.png", "caption": tricky}, None]).tolist() == [0, 1]
    assert shared.add(codes[2:], metadata=[{"file": "c.png", "rank": 3}]).tolist() == [2]
    items = shared.search_items(np.array([[1] * 8]), k=3)
    assert items == [[{"id": 0, "hamming": 0, "file": "a.png", "caption": tricky},
                      {"id": 2, "hamming": 4, "file": "c.png", "rank": 3},
                      {"id": 1, "hamming": 8}]]


def test_refusals(archive, dsn):
    shared = archive(8)
    shared.add(np.ones((2, 8), np.int8), ids=[1, 2])
    with pytest.raises(ValueError, match=r"already stored or repeats.*nothing was added"):
        shared.add(np.ones((3, 8), np.int8), ids=[3, 4, 2])
    assert shared.count() == 2
    with pytest.raises(ValueError, match=r"holds codes of type bit\(8\), expected bit\(64\)"):
        archive(64)
    with pytest.raises(ValueError, match="does not exist"):
        archive(8, table="no_such_table", create=False)
    with pytest.raises(ValueError, match="letters, digits"):
        PostgresArchive(dsn, bits=8, table="x; DROP TABLE y")
    with pytest.raises(ValueError, match="k must be a positive int"):
        shared.search(np.ones((1, 8), np.int8), k=0)
