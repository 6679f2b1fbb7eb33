"""Search results with their geography: a GeoJSON FeatureCollection and a locator picture.

`to_geojson` turns ranked hits into a FeatureCollection (RFC 7946): one Feature per hit
with its footprint polygon in EPSG:4326 (null geometry for items without one, e.g. plain
image files) and rank, Hamming distance, scene, pixel window, acquisition time and
thumbnail as properties. `write_locator` draws the hits' footprints, numbered by rank,
over a quicklook of each of their scenes, so an operator sees where the matches lie.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rs_hashing.atomic_files import atomic_path
from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.scene_reader import SceneReader

# Properties copied from an item's metadata into its Feature, when present.
_PROPERTIES = ("file", "caption", "class", "tile_id", "scene_id", "window", "acquired", "crs", "bounds")
_QUICKLOOK_PIXELS = 700 * 700
_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def to_geojson(hits: Sequence[Mapping[str, Any]], query: str | None = None,
               thumbnails: Sequence[str | None] | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of ranked hits ({"id", "hamming", **metadata})."""
    features = []
    for rank, hit in enumerate(hits, start=1):
        properties = {"rank": rank, "id": int(hit["id"]), "hamming": int(hit["hamming"])}
        properties.update({key: hit[key] for key in _PROPERTIES if key in hit})
        if thumbnails is not None and thumbnails[rank - 1]:
            properties["thumbnail"] = thumbnails[rank - 1]
        features.append({"type": "Feature", "id": int(hit["id"]), "geometry": hit.get("footprint"),
                         "properties": properties})
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if query is not None:
        collection["query"] = query  # A foreign member (RFC 7946 section 6.1).
    return collection


def write_thumbnails(hits: Sequence[Mapping[str, Any]], read_pixels, folder: str) -> list[str | None]:
    """PNG of each hit's pixels (`read_pixels(hit)` -> uint8 [H, W, 3], or None where
    they cannot be read), named by rank; returns the paths (None where unreadable)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for rank, hit in enumerate(hits, start=1):
        try:
            pixels = read_pixels(hit)
        except (OSError, ValueError, KeyError, StopIteration):
            pixels = None
        if pixels is None:
            paths.append(None)
            continue
        path = os.path.join(folder, f"{rank:03d}_{int(hit['id'])}.png")
        with atomic_path(path) as tmp:
            Image.fromarray(np.asarray(pixels, np.uint8)).save(tmp, format="PNG")
        paths.append(path)
    return paths


def _scene_of(spec: Mapping[str, Any], scene_id: str) -> Scene:
    scenes = Scene.discover(spec["source"], spec.get("bands") or None, spec.get("nodata"))
    return next(scene for scene in scenes if scene.scene_id == scene_id)


def _quicklook(scene: Scene, radiometry: Mapping[str, Any]) -> tuple[Image.Image, float]:
    """The scene decimated to about `_QUICKLOOK_PIXELS` through the tiles' radiometry,
    and the factor from scene pixels to quicklook pixels."""
    with SceneReader(scene) as reader:
        pixels, _ = reader.read_decimated(_QUICKLOOK_PIXELS)
    image = Image.fromarray(Radiometry.from_dict(radiometry).apply(pixels))
    return image, image.width / scene.width


def write_locator(hits: Sequence[Mapping[str, Any]], scenes: Mapping[str, Mapping[str, Any]],
                  out_path: str, title: str = "") -> str:
    """A PNG with one panel per scene that holds hits: the scene's quicklook with each
    hit's pixel window outlined and numbered by rank (hits without a scene are left out).

    Args:
        hits: ranked items with "scene_id", "window" and "radiometry" (tile metadata).
        scenes: the index's `info["scenes"]` (source and bands of each scene).
        out_path: the .png to write.
        title: drawn above the panels.

    Raises:
        ValueError: no hit lies in a known scene.
    """
    by_scene: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for rank, hit in enumerate(hits, start=1):
        if hit.get("scene_id") in scenes and "window" in hit:
            by_scene.setdefault(hit["scene_id"], []).append((rank, hit))
    if not by_scene:
        raise ValueError("no result lies in a scene of the index: nothing to locate")
    font = ImageFont.load_default(size=15)
    panels = []
    for scene_id, ranked in by_scene.items():
        image, factor = _quicklook(_scene_of(scenes[scene_id], scene_id), ranked[0][1]["radiometry"])
        draw = ImageDraw.Draw(image)
        for rank, hit in ranked:
            window = hit["window"]
            box = [window["col_off"] * factor, window["row_off"] * factor,
                   (window["col_off"] + window["width"]) * factor, (window["row_off"] + window["height"]) * factor]
            colour = _COLOURS[(rank - 1) % len(_COLOURS)]
            draw.rectangle(box, outline=colour, width=2)
            label = (box[0] + 3, box[1] + 2)
            draw.rectangle(draw.textbbox(label, str(rank), font=font), fill=(255, 255, 255))
            draw.text(label, str(rank), fill=colour, font=font)
        acquired = ranked[0][1].get("acquired") or ""
        panels.append((f"{scene_id} {acquired[:10]}".strip(), image))
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    cell_w = max(image.width for _, image in panels)
    cell_h = max(image.height for _, image in panels) + 18
    top = 22 if title else 0
    sheet = Image.new("RGB", (columns * cell_w + (columns + 1) * 8, top + rows * cell_h + (rows + 1) * 8),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((8, 6), title, fill=(20, 20, 20), font=font)
    for i, (label, image) in enumerate(panels):
        x = 8 + (i % columns) * (cell_w + 8)
        y = top + 8 + (i // columns) * (cell_h + 8)
        draw.text((x, y), label, fill=(20, 20, 20), font=font)
        sheet.paste(image, (x, y + 16))
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path
