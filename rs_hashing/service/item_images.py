"""The pixels behind an index's items, for thumbnails, "more like this" and quicklooks.

An item is found by its id only: the file an image item names is looked up under the
index's image folder (and refused if the name leads out of it), a tile is read again
from its scene's window. No path from a request ever reaches the file system.
"""

from __future__ import annotations

import collections
import io
import os
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.raster_image import read_raster_image
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.scene_reader import SceneReader
from rs_hashing.image_files import RASTER_EXTENSIONS, is_image_file
from rs_hashing.index import archive_indexing
from rs_hashing.index.hamming_index import HammingIndex
from rs_hashing.service.request_error import RequestError

# Pixels of a scene quicklook, as in the locator pictures of `rs-hashing search`.
QUICKLOOK_PIXELS = 700 * 700
_SCAN_CHUNK = 100_000


class _LruBytes:
    """A bounded, thread-safe least-recently-used cache of bytes by key."""

    def __init__(self, size: int):
        self._size = size
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = make()  # Outside the lock: two makers of one key at once is harmless.
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return value


def _png(pixels: np.ndarray, max_side: int | None = None) -> bytes:
    image = Image.fromarray(np.asarray(pixels, np.uint8))
    if max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class ItemImages:
    """Pixels, thumbnails and scene quicklooks of an index's items.

    Args:
        index: the searched index.
        image_root: folder of the archive images if it moved since indexing (else
            the index's `info["image_root"]`).
        radiometry: how 16-bit TIFF files become 8-bit (the run's contract).
        thumbnail_size: longest side of a thumbnail (px).
        cached_thumbnails: thumbnails kept in memory.
    """

    def __init__(self, index: HammingIndex, image_root: str | None = None,
                 radiometry: Radiometry | None = None, thumbnail_size: int = 256,
                 cached_thumbnails: int = 2048):
        self._index = index
        root = image_root or index.info.get("image_root")
        self._root = os.path.realpath(root) if root else None
        self._scenes: dict[str, Any] = dict(index.info.get("scenes") or {})
        self._radiometry = radiometry or Radiometry()
        self._thumbnail_size = thumbnail_size
        self._thumbnails = _LruBytes(cached_thumbnails)
        self._quicklooks = _LruBytes(max(1, min(len(self._scenes), 16)))
        self._scene_objects: dict[str, Scene] = {}
        self._scene_radiometry: dict[str, dict] | None = None
        self._lock = threading.Lock()

    @property
    def has_scenes(self) -> bool:
        return bool(self._scenes)

    def item(self, item_id: int) -> dict[str, Any]:
        """The item's metadata.

        Raises:
            RequestError: 404 when the index holds no such id.
        """
        try:
            return self._index.metadata([item_id])[0]
        except KeyError:
            raise RequestError(404, f"no item with id {item_id} in the index") from None

    def has_item(self, item_id: int) -> bool:
        try:
            self._index.metadata([item_id])
        except KeyError:
            return False
        return True

    def is_tile(self, item: dict[str, Any]) -> bool:
        return item.get("scene_id") in self._scenes and "window" in item

    def file_path(self, item: dict[str, Any]) -> str:
        """The image file of an image item, inside the image folder.

        Raises:
            RequestError: 404 when the item names no file, its name leads out of the
                image folder, or the file is gone or not an image.
        """
        name = item.get("file")
        if not isinstance(name, str) or not name or self._root is None:
            raise RequestError(404, "this item has no image file")
        path = os.path.realpath(os.path.join(self._root, name))
        if os.path.commonpath([path, self._root]) != self._root or not is_image_file(path):
            raise RequestError(404, "this item's file lies outside the archive's image folder")
        if not os.path.isfile(path):
            raise RequestError(404, "this item's image file is gone from the archive's image folder")
        return path

    def pixels(self, item: dict[str, Any]) -> np.ndarray:
        """uint8 [H, W, 3] of an item: its tile read again, or its image file.

        Raises:
            RequestError: 404 when the pixels cannot be found or read.
        """
        try:
            if self.is_tile(item):
                return archive_indexing.tile_pixels({"scenes": self._scenes}, item)
            path = self.file_path(item)
            if path.lower().endswith(RASTER_EXTENSIONS):
                return read_raster_image(path, self._radiometry, name=os.path.basename(path))
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except RequestError:
            raise
        except (OSError, ValueError, KeyError, StopIteration) as e:
            raise RequestError(404, f"this item's pixels cannot be read ({type(e).__name__})") from None

    def thumbnail_png(self, item_id: int) -> bytes:
        """A PNG of the item, its longest side at most `thumbnail_size` (cached).

        Raises:
            RequestError: 404 for an unknown id or unreadable pixels.
        """
        item = self.item(item_id)
        return self._thumbnails.get(item_id, lambda: _png(self.pixels(item), self._thumbnail_size))

    # ------------------------------------------------------------------ scenes

    def _scene(self, scene_id: str) -> Scene:
        with self._lock:
            scene = self._scene_objects.get(scene_id)
        if scene is None:
            spec = self._scenes[scene_id]
            found = Scene.discover(spec["source"], spec.get("bands") or None, spec.get("nodata"))
            scene = next(s for s in found if s.scene_id == scene_id)
            with self._lock:
                self._scene_objects[scene_id] = scene
        return scene

    def _radiometry_of(self, scene_id: str) -> dict | None:
        """The radiometry the scene's tiles were indexed with (one scan of the index)."""
        with self._lock:
            if self._scene_radiometry is None:
                found: dict[str, dict] = {}
                ids = self._index.ids()
                for start in range(0, len(ids), _SCAN_CHUNK):
                    for item in self._index.metadata(ids[start:start + _SCAN_CHUNK]):
                        if item.get("scene_id") in self._scenes and item["scene_id"] not in found:
                            found[item["scene_id"]] = item.get("radiometry") or {}
                    if len(found) == len(self._scenes):
                        break
                self._scene_radiometry = found
            return self._scene_radiometry.get(scene_id)

    def quicklook_png(self, scene_id: str) -> bytes:
        """A PNG of the whole scene decimated to about `QUICKLOOK_PIXELS`, through the
        radiometry its tiles were indexed with (cached).

        Raises:
            RequestError: 404 for a scene the index does not hold or cannot read.
        """
        if scene_id not in self._scenes:
            raise RequestError(404, f"no scene {scene_id!r} in the index")

        def make() -> bytes:
            radiometry = self._radiometry_of(scene_id)
            if radiometry is None:
                raise RequestError(404, f"scene {scene_id!r} has no indexed tile")
            try:
                with SceneReader(self._scene(scene_id)) as reader:
                    pixels, _ = reader.read_decimated(QUICKLOOK_PIXELS)
            except (OSError, ValueError, StopIteration) as e:
                raise RequestError(404, f"scene {scene_id!r} cannot be read ({type(e).__name__})") from None
            return _png(Radiometry.from_dict(radiometry).apply(pixels))

        return self._quicklooks.get(scene_id, make)

    def locator(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """Where a tile lies on its scene's quicklook: {"scene_id", "quicklook" (URL),
        "box" [x0, y0, x1, y1] as fractions of the scene's width and height}; None for
        items that are not tiles or whose scene cannot be read."""
        if not self.is_tile(item):
            return None
        try:
            scene = self._scene(item["scene_id"])
        except (OSError, ValueError, KeyError, StopIteration):
            return None
        window = item["window"]
        box = [window["col_off"] / scene.width, window["row_off"] / scene.height,
               (window["col_off"] + window["width"]) / scene.width,
               (window["row_off"] + window["height"]) / scene.height]
        quicklook = f"/quicklooks/{urllib.parse.quote(item['scene_id'], safe='')}"
        return {"scene_id": item["scene_id"], "quicklook": quicklook,
                "box": [round(min(max(value, 0.0), 1.0), 6) for value in box]}
