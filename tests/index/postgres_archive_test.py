"""The PostgreSQL archive against a real server (started by tools/start_test_postgres.sh,
or the one named by RS_HASHING_TEST_POSTGRES_DSN); skipped, with the reason, when none
can be started. The geography tests also need PostGIS on that server (the script
installs it where it can) and are skipped, with the reason, without it."""

import collections
import datetime
import hashlib
import os
import re
import subprocess

import numpy as np
import pytest
import shapely

from rs_hashing import metrics
from rs_hashing.index.hamming_index import HammingIndex
from rs_hashing.index.postgres_archive import PostgresArchive, bit_strings
from tests import testing

START_SCRIPT = os.path.join(testing.REPO_ROOT, "tools", "start_test_postgres.sh")
DSN_VARIABLE = "RS_HASHING_TEST_POSTGRES_DSN"


Server = collections.namedtuple("Server", ["dsn", "log"])


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("psycopg", reason='psycopg 3 is not installed (pip install "psycopg[binary]")')
    given = os.environ.get(DSN_VARIABLE)
    if given:
        yield Server(given, f"the server named by {DSN_VARIABLE}")
        return
    try:
        started = subprocess.run(["bash", START_SCRIPT], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"no PostgreSQL server: {START_SCRIPT} could not run ({e})")
    if started.returncode != 0 or not started.stdout.strip():
        reason = " | ".join(started.stderr.strip().splitlines()[-3:])
        pytest.skip(f"no PostgreSQL server could be started by {START_SCRIPT}: {reason}")
    dsn = started.stdout.strip().splitlines()[-1]
    yield Server(dsn, started.stderr)
    subprocess.run(["bash", START_SCRIPT, "--stop", dsn], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def dsn(server):
    return server.dsn


@pytest.fixture(scope="module")
def postgis(server):
    import psycopg  # pylint: disable=import-outside-toplevel

    with psycopg.connect(server.dsn) as connection:
        available = connection.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'").fetchone()[0]
    if not available:
        notes = [line for line in server.log.splitlines() if "postgis" in line.lower()]
        pytest.skip("PostGIS is not available on the test server: "
                    + (" | ".join(notes[-2:]) or "no postgis extension"))


@pytest.fixture
def archive(dsn, request):
    # Parametrised names hold any character; the digest keeps cut names apart.
    name = request.node.name
    table = (f"test_{re.sub(r'[^A-Za-z0-9_]', '_', name)[:40]}_"
             f"{hashlib.sha1(name.encode()).hexdigest()[:8]}")
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


# ---------------------------------------------------------------------- geography

EPOCH = np.datetime64("2015-01-01T00:00:00", "us")


def _scenes(rng, n):
    """Random small footprints around the world (boxes, some MultiPolygons of two,
    some missing) and random acquisition times (some missing), both also in the forms
    `add` is given them."""
    footprints = np.empty(n, dtype=object)
    for i in range(n):
        if i % 10 == 3:
            continue  # no footprint
        lon, lat = rng.uniform(-178, 178), rng.uniform(-88, 88)
        width, height = rng.uniform(0.05, 4, size=2)
        box = shapely.box(*np.round([lon, lat, min(lon + width, 180), min(lat + height, 90)], 4))
        two = shapely.MultiPolygon([box, shapely.box(-lon - 1, -lat - 1, -lon, -lat)])
        footprints[i] = two if i % 25 == 7 and shapely.is_valid(two) else box
    # A box whose corner is the corner of a query box: touching counts in both.
    footprints[0] = shapely.box(10, 10, 11, 11)
    seconds = rng.integers(0, 10 * 365 * 86400, size=n)
    times = EPOCH + seconds.astype("timedelta64[s]")
    times[5::8] = np.datetime64("NaT")
    given_footprints = [None if f is None else (shapely.geometry.mapping(f) if i % 2 else f)
                        for i, f in enumerate(footprints)]
    given_times = []
    for i, time in enumerate(times):
        if np.isnat(time):
            given_times.append(None)
        elif i % 3 == 0:
            given_times.append(str(time.astype("datetime64[s]")) + "Z")
        elif i % 3 == 1:  # the same instant two hours east of UTC
            utc = time.item().replace(tzinfo=datetime.timezone.utc)
            given_times.append(utc.astimezone(datetime.timezone(datetime.timedelta(hours=2))))
        else:
            given_times.append(time)  # datetime64 without an offset: UTC
    return footprints, times, given_footprints, given_times


def _brute_force(queries, database, ids, keep, k):
    """Ids and Hamming distances of the k nearest kept items, ties by id."""
    distances = metrics.hamming_distance(queries, database)[:, keep]
    kept_ids = ids[keep]
    order = np.lexsort((np.broadcast_to(kept_ids, distances.shape), distances), axis=-1)[:, :k]
    return kept_ids[order], np.take_along_axis(distances, order, axis=1)


def test_filtered_search_equals_brute_force(archive, postgis):
    rng = np.random.default_rng(7)
    n, bits = 1500, 16  # 16 bits: many ties at the k-th distance
    database, queries = _random_codes(rng, n, bits), _random_codes(rng, 5, bits)
    ids = rng.permutation(n) * 3 + 1
    footprints, times, given_footprints, given_times = _scenes(rng, n)
    shared = archive(bits, geometry=True)
    assert shared.geometry
    metadata = [{"scene": f"S2_{i}"} for i in range(n)]
    shared.add(database[:600], ids=ids[:600], metadata=metadata[:600],
               footprints=given_footprints[:600], times=given_times[:600])
    shared.add(database[600:], ids=ids[600:], metadata=metadata[600:],
               footprints=given_footprints[600:], times=given_times[600:])

    bboxes = [None, (-180, -90, 180, 90), (-10, 35, 30, 60), (100, -10, 140, 10),
              (-75.5, -60, -74.5, 60), (11, 11, 12, 12), (10.5, 10.5, 10.5, 10.5),
              (0.0, 0.0, 0.0, 0.0)]
    inside = times[~np.isnat(times)]
    a, b = np.sort(rng.choice(inside, 2, replace=False))
    edge = times[1]  # an item's own time: both bounds are inclusive
    ranges = [(None, None), (a, None), (None, b), (a, b), (edge, edge)]
    for bbox in bboxes:
        keep = np.ones(n, bool)
        if bbox is not None:
            keep &= shapely.intersects(footprints, shapely.box(*bbox))
        for after, before in ranges:
            in_range = keep.copy()
            if after is not None:
                in_range &= times >= after  # NaT compares False: no time, no match
            if before is not None:
                in_range &= times <= before
            # The bounds go in as ISO text, datetime and datetime64 in turn.
            given_after = None if after is None else str(after.astype("datetime64[s]"))
            given_before = None if before is None else before.item()
            for k in (1, 15):
                got_ids, got_distances = shared.search(queries, k, bbox=bbox, after=given_after,
                                                       before=given_before)
                expected_ids, expected_distances = _brute_force(queries, database, ids, in_range, k)
                context = f"bbox={bbox} after={after} before={before} k={k}"
                np.testing.assert_array_equal(got_ids, expected_ids, err_msg=context)
                np.testing.assert_array_equal(got_distances, expected_distances, err_msg=context)
    # The cases are not vacuous: the touching box matches, the empty one does not.
    assert shared.search(queries[:1], 5, bbox=(11, 11, 12, 12))[0].tolist() == [[ids[0]]]
    assert shared.search(queries, 5, bbox=(0, 0, 0, 0))[0].shape == (5, 0)
    assert len(shared.search(queries[:1], 5, after=edge, before=edge)[0][0]) >= 1

    # Items carry their footprint (exactly as given) and time back.
    position = {item_id: i for i, item_id in enumerate(ids.tolist())}
    for item in shared.search_items(queries[:1], n)[0]:
        i = position[item["id"]]
        assert item["scene"] == f"S2_{i}"
        if footprints[i] is None:
            assert item["footprint"] is None
        else:
            assert shapely.equals_exact(shapely.geometry.shape(item["footprint"]), footprints[i], 0)
        if np.isnat(times[i]):
            assert item["acquired"] is None
        else:
            expected = times[i].item().replace(tzinfo=datetime.timezone.utc)
            assert datetime.datetime.fromisoformat(item["acquired"]) == expected
            assert item["acquired"].endswith("+00:00")


def test_spatial_and_time_indexes_exist(archive, postgis):
    shared = archive(8, geometry=True)
    definitions = [row[0] for row in shared._connection.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (shared.table,)).fetchall()]
    assert any("USING gist (footprint)" in definition for definition in definitions), definitions
    assert any("USING btree (acquired)" in definition for definition in definitions), definitions


def test_plain_tables_keep_working_and_get_geography_on_request(archive, postgis):
    codes = np.array([[1] * 8, [-1] * 8], np.int8)
    plain = archive(8)
    assert not plain.geometry
    plain.add(codes, metadata=[{"file": "old.png"}, None])
    assert plain.search_items(codes[:1], 2) == [[{"id": 0, "hamming": 0, "file": "old.png"},
                                                 {"id": 1, "hamming": 8}]]
    with pytest.raises(ValueError, match="opened without geography.*geometry=True"):
        plain.search(codes, 1, bbox=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="opened without geography"):
        plain.search(codes, 1, after="2020-01-01")
    with pytest.raises(ValueError, match="opened without geography"):
        plain.add(codes, ids=[5, 6], footprints=[shapely.box(0, 0, 1, 1), None])
    with pytest.raises(ValueError, match="no geography columns.*create=True"):
        archive(8, geometry=True, create=False)

    upgraded = archive(8, geometry=True)  # adds the columns; the old items have none
    assert upgraded.geometry and archive(8).geometry and not archive(8, geometry=False).geometry
    upgraded.add(codes[1:], ids=[2], footprints=[shapely.box(0, 0, 1, 1)],
                 times=["2020-06-01T12:00:00+00:00"])
    assert upgraded.search(codes[:1], 3)[0].tolist() == [[0, 1, 2]]
    assert upgraded.search(codes[:1], 3, bbox=(-180, -90, 180, 90))[0].tolist() == [[2]]
    assert upgraded.search(codes[:1], 3, before="2030-01-01")[0].tolist() == [[2]]
    assert upgraded.search_items(codes[:1], 1)[0] == [
        {"id": 0, "hamming": 0, "file": "old.png", "footprint": None, "acquired": None}]
    assert upgraded.search_items(codes[:1], 1, after="2020-06-01T12:00:00Z")[0] == [
        {"id": 2, "hamming": 8, "acquired": "2020-06-01T12:00:00+00:00",
         "footprint": {"type": "Polygon",
                       "coordinates": [[[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]]]}}]


@pytest.mark.parametrize("bbox, message", [
    ((0, 0, 1), "must be 4 numbers"),
    ("0,0,1,1", "must be \\(min_lon"),
    ((0, 0, float("nan"), 1), "max_lon=nan must be a finite number"),
    ((0, "0", 1, 1), "min_lat='0' must be a finite number"),
    ((0, 0, 1, float("inf")), "max_lat=inf must be a finite number"),
    ((10, 0, 5, 1), "min > max"),
    ((0, 5, 1, 4), "min > max"),
    ((-181, 0, 0, 1), "min_lon=-181.0 lies outside \\[-180, 180\\]"),
    ((0, 0, 1, 90.5), "max_lat=90.5 lies outside \\[-90, 90\\]"),
])
def test_bad_bboxes_are_refused(archive, postgis, bbox, message):
    shared = archive(8, geometry=True)
    with pytest.raises(ValueError, match=message):
        shared.search(np.ones((1, 8), np.int8), 1, bbox=bbox)


def test_bad_times_and_footprints_are_refused(archive, postgis):
    shared = archive(8, geometry=True)
    query = np.ones((1, 8), np.int8)
    with pytest.raises(ValueError, match="after='yesterday' is not an ISO 8601 time"):
        shared.search(query, 1, after="yesterday")
    with pytest.raises(ValueError, match="before=20200101 must be an ISO 8601 string"):
        shared.search(query, 1, before=20200101)
    with pytest.raises(ValueError, match="after='2021-01-02' is later than before='2021-01-01'"):
        shared.search(query, 1, after="2021-01-02", before="2021-01-01")
    codes = np.ones((2, 8), np.int8)
    good = shapely.box(0, 0, 1, 1)
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    with np.errstate(invalid="ignore"):  # shapely warns about the NaN it is asked for
        not_finite = shapely.Polygon([(0, 0), (1, 0), (float("nan"), 1)])
    refusals = [
        (dict(footprints=[good]), "footprints must be a sequence of 2"),
        (dict(footprints=[good, bowtie]),
         r"footprints\[1\].*not a valid polygon \(Self-intersection"),
        (dict(footprints=[not_finite, good]),
         r"footprints\[0\].*not finite"),
        (dict(footprints=[shapely.Point(0, 0), good]), r"footprints\[0\].*got a Point"),
        (dict(footprints=[good, shapely.box(170, 0, 190, 1)]), r"footprints\[1\].*leaves lon"),
        (dict(footprints=[{"type": "Feature"}, good]), r"footprints\[0\].*not a GeoJSON geometry"),
        (dict(footprints=[good, "POLYGON ((0 0, 1 0, 1 1, 0 0))"]),
         r"footprints\[1\].*must be a GeoJSON"),
        (dict(times=["2021-01-01", "31/12/2021"]), r"times\[1\]='31/12/2021' is not an ISO 8601"),
        (dict(times=[np.datetime64("NaT"), None]), r"times\[0\]=NaT is not a time"),
    ]
    for kwargs, message in refusals:
        with pytest.raises(ValueError, match=message):
            shared.add(codes, ids=[1, 2], **kwargs)
    assert shared.count() == 0
