"""What the search service does, apart from HTTP: queries in, ranked hits out.

`SearchService` holds the trained run, the index (and optionally the shared PostgreSQL
archive), the encoder thread and the items' pixels. Its `search_*` coroutines encode a
query on the encoder thread, search on a worker thread, and return the JSON body of the
answer; the web app (`create_app`) only maps requests onto them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import threading
import time
from typing import Any

import faiss
import numpy as np
from starlette.concurrency import run_in_threadpool

from rs_hashing.codes import Codes
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index.hamming_index import HammingIndex, pack_codes
from rs_hashing.service.archive_geography import ArchiveGeography
from rs_hashing.service.inference_worker import InferenceWorker
from rs_hashing.service.item_images import ItemImages
from rs_hashing.service.request_error import RequestError
from rs_hashing.service.search_filter import SearchFilter
from rs_hashing.service.service_limits import ServiceLimits
from rs_hashing.service.uploaded_image import UploadedImage

# Hit keys that are not metadata, and metadata kept from clients: "sources" names the
# scene files' paths on this machine.
_RESULT_KEYS = ("id", "hamming", "footprint", "sources")
_INDEX_INFO = ("run", "model", "source", "image_root", "image_size")


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


_THREAD = threading.local()


def _one_openmp_thread() -> None:
    """Lets faiss use one OpenMP thread in the calling (worker) thread only: requests
    already search in parallel on the thread pool, and an OpenMP team per single query
    spin-waits against the others (a 1M-code search took 3 ms on one thread and 20-55
    ms with two on a busy two-core machine). OpenMP keeps this setting per thread."""
    if not getattr(_THREAD, "one_openmp_thread", False):
        faiss.omp_set_num_threads(1)
        _THREAD.one_openmp_thread = True


def _hex(packed: np.ndarray) -> str:
    return np.asarray(packed, np.uint8).reshape(-1).tobytes().hex()


class SearchService:
    """Typed, image and "more like this" search over one indexed archive.

    Args:
        model: the trained run the index was made with.
        index: the archive's index (ids, metadata and, for thumbnails and "more like
            this", the way back to each item's pixels).
        archive: a `PostgresArchive` holding the same items under the same ids; when
            given, every search runs there (with its bbox and time filters in SQL) and
            the index serves items' metadata and pixels.
        limits: request bounds.
        image_root: the archive's image folder if it moved since indexing.
        index_path: the index file, to name it and its SHA-256 in `health`.
    """

    def __init__(self, model: HashingModel, index: HammingIndex, archive: Any = None,
                 limits: ServiceLimits | None = None, image_root: str | None = None,
                 index_path: str | None = None):
        if index.bits != model.bits:
            raise ValueError(f"the index holds {index.bits}-bit codes, the run makes {model.bits}-bit codes")
        if archive is not None and archive.bits != model.bits:
            raise ValueError(f"the PostgreSQL archive holds {archive.bits}-bit codes, the run makes "
                             f"{model.bits}-bit codes")
        index.build()  # an approximate index due to be built is built now, not by two requests at once
        self.model = model
        self.index = index
        self.archive = archive
        self.limits = limits or ServiceLimits()
        self.images = ItemImages(index, image_root, model.radiometry, self.limits.thumbnail_size,
                                 self.limits.cached_thumbnails)
        self.worker = InferenceWorker(model, max_pending=self.limits.max_pending)
        self._archive_lock = threading.Lock()  # one psycopg connection: one query at a time
        self._geography: ArchiveGeography | None = None
        self._geography_lock = threading.Lock()
        self._run = model.metadata()
        self._index_identity = {"path": os.path.abspath(index_path) if index_path else None,
                                "sha256": _file_digest(index_path) if index_path else None,
                                "count": index.count, "bits": index.bits, "structure": index.structure,
                                **{key: index.info[key] for key in _INDEX_INFO if key in index.info},
                                "scenes": sorted(index.info.get("scenes") or {})}

    def close(self) -> None:
        self.worker.close()
        if self.archive is not None and hasattr(self.archive, "close"):
            self.archive.close()

    # ------------------------------------------------------------------ requests

    def check_text(self, text: str | None) -> str:
        """The typed query, trimmed.

        Raises:
            RequestError: 400 when absent or blank, 413 when over `max_text_chars`.
        """
        if text is None:
            raise RequestError(400, "give a sentence to search with: text=...")
        text = text.strip()
        if not text:
            raise RequestError(400, "the text to search with is empty")
        if len(text) > self.limits.max_text_chars:
            raise RequestError(413, f"the text is {len(text)} characters; this service takes at most "
                                    f"{self.limits.max_text_chars}")
        return text

    def check_k(self, k: int | None) -> int:
        """k, or the default; RequestError 400 outside [1, max_k]."""
        if k is None:
            return self.limits.default_k
        if not 1 <= k <= self.limits.max_k:
            raise RequestError(400, f"k={k} must lie in [1, {self.limits.max_k}]")
        return k

    async def search_text(self, text: str | None, k: int | None = None,
                          search_filter: SearchFilter | None = None) -> dict[str, Any]:
        """The answer to a typed query (see `answer`)."""
        started = time.perf_counter()
        text, k = self.check_text(text), self.check_k(k)
        packed = await asyncio.wrap_future(self.worker.encode_text(text))
        return await run_in_threadpool(self.answer, {"kind": "text", "text": text}, packed, k,
                                       search_filter or SearchFilter(), None, started)

    async def search_image(self, data: bytes, name: str = "", k: int | None = None,
                           search_filter: SearchFilter | None = None) -> dict[str, Any]:
        """The answer to an uploaded image: decoded and resized by the run's own reader
        (`HashingModel.preprocess_image_bytes`), as every archive image was."""
        started = time.perf_counter()
        k = self.check_k(k)
        upload = UploadedImage.inspect(data, self.limits, name)
        pixels = await run_in_threadpool(self._decode, upload.data)
        packed = await asyncio.wrap_future(self.worker.submit(lambda: self._encode_pixels(pixels)))
        query = {"kind": "image", "image": upload.name, "format": upload.format,
                 "width": upload.width, "height": upload.height}
        return await run_in_threadpool(self.answer, query, packed, k, search_filter or SearchFilter(),
                                       None, started)

    async def search_similar(self, item_id: int, k: int | None = None,
                             search_filter: SearchFilter | None = None) -> dict[str, Any]:
        """Items like an indexed one (itself left out), from the item's code: the
        stored one where the index gives it, else its pixels encoded again exactly as
        when it was indexed."""
        started = time.perf_counter()
        k = self.check_k(k)
        item = self.images.item(item_id)
        packed = self.stored_code(item_id)
        if packed is None:
            packed = await self._encode_item(item)
        return await run_in_threadpool(self.answer, {"kind": "similar", "id": item_id}, packed, k,
                                       search_filter or SearchFilter(), item_id, started)

    def stored_code(self, item_id: int) -> np.ndarray | None:
        """The item's packed code as stored in the index, when the index offers a public
        `codes(ids)` accessor; None otherwise."""
        codes = getattr(self.index, "codes", None)
        if not callable(codes):
            return None
        return pack_codes(codes([item_id]), self.model.bits)

    async def _encode_item(self, item: dict[str, Any]) -> np.ndarray:
        if self.images.is_tile(item):
            # As `index_scenes` encoded it: the tile's uint8 pixels through encode_images.
            pixels = await run_in_threadpool(self.images.pixels, item)
            return await asyncio.wrap_future(
                self.worker.submit(lambda: self.model.encode_images([pixels]).packed))
        # As `index_archive` encoded it: the file's bytes decoded by the run's reader.
        path = self.images.file_path(item)
        data = await run_in_threadpool(_read_bytes, path)
        pixels = await run_in_threadpool(self._decode, data)
        return await asyncio.wrap_future(self.worker.submit(lambda: self._encode_pixels(pixels)))

    def _decode(self, data: bytes) -> np.ndarray:
        try:
            return self.model.preprocess_image_bytes(data)
        except Exception as e:  # pylint: disable=broad-except  (TF's InvalidArgumentError, rasterio's)
            raise RequestError(415, f"the image cannot be decoded ({type(e).__name__})") from None

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return Codes.from_hash(self.model.image_hash_from_pixels(pixels[None])).packed

    # ------------------------------------------------------------------ searching

    def geography(self) -> ArchiveGeography:
        """The items' footprints and times, read from the index on first use."""
        with self._geography_lock:
            if self._geography is None:
                self._geography = ArchiveGeography.from_index(self.index)
            return self._geography

    def search(self, packed: np.ndarray, k: int, search_filter: SearchFilter,
               exclude: int | None = None) -> list[dict[str, Any]]:
        """The top k items ({"id", "hamming", **metadata}) by (Hamming distance, id)
        among those that pass the filter, `exclude` left out."""
        want = k + 1 if exclude is not None else k
        _one_openmp_thread()
        if self.archive is not None:
            hits = self._search_archive(packed, want, search_filter)
        elif search_filter.empty:
            hits = self.index.search_items(packed, want)[0]
        else:
            hits = self._search_filtered(packed, want, search_filter)
        return [hit for hit in hits if hit["id"] != exclude][:k]

    def _search_archive(self, packed: np.ndarray, k: int, search_filter: SearchFilter) -> list[dict]:
        with self._archive_lock:
            try:
                return self.archive.search_items(packed, k, bbox=search_filter.bbox,
                                                 after=search_filter.after, before=search_filter.before)[0]
            except ValueError as e:
                raise RequestError(400, str(e)) from None
            except Exception as e:  # pylint: disable=broad-except
                if type(e).__module__.split(".")[0] == "psycopg":
                    raise RequestError(503, f"the PostgreSQL archive cannot be searched now "
                                            f"({type(e).__name__})") from None
                raise

    def _search_filtered(self, packed: np.ndarray, k: int, search_filter: SearchFilter) -> list[dict]:
        """Exact top k among the items that pass the filter: the index's ranking by
        (distance, id) read further and further (x4 each round, at most the whole
        index) until k of them pass; its first k passing items are the top k of the
        passing items."""
        allowed = self.geography().matching_ids(search_filter)
        count = self.index.count
        if not len(allowed) or not count:
            return []
        depth = max(64, 4 * k)
        while True:
            depth = min(depth, count)
            ids, distances = self.index.search(packed, depth)
            ids, distances = ids[0], distances[0]
            found = ids >= 0  # an approximate index may return fewer than asked
            passing = found & np.isin(ids, allowed)
            if passing.sum() >= k or depth >= count or found.sum() < depth:
                break
            depth *= 4
        ids, distances = ids[passing][:k], distances[passing][:k]
        metadata = self.index.metadata(ids) if len(ids) else []
        return [{"id": int(i), "hamming": int(d), **item} for i, d, item in zip(ids, distances, metadata)]

    def answer(self, query: dict[str, Any], packed: np.ndarray, k: int, search_filter: SearchFilter,
               exclude: int | None, started: float) -> dict[str, Any]:
        """The JSON body of an answer: the query (with its code in hex, k and filter),
        the ranked hits and the time taken."""
        hits = self.search(packed, k, search_filter, exclude)
        query = {**query, "code": _hex(packed), "k": k, **search_filter.describe()}
        return {"query": query, "backend": "postgres" if self.archive is not None else "index",
                "count": len(hits), "hits": [self._hit(rank, hit) for rank, hit in enumerate(hits, start=1)],
                "milliseconds": round((time.perf_counter() - started) * 1000, 2)}

    def _hit(self, rank: int, hit: dict[str, Any]) -> dict[str, Any]:
        item_id = int(hit["id"])
        # Items of a shared archive that the index does not hold have no pixels here.
        known = self.archive is None or self.images.has_item(item_id)
        return {"id": item_id, "rank": rank, "hamming": int(hit["hamming"]),
                "metadata": {key: value for key, value in hit.items() if key not in _RESULT_KEYS},
                "footprint": hit.get("footprint"),
                "thumbnail": f"/thumbnails/{item_id}" if known else None,
                "similar": f"/api/similar/{item_id}" if known else None,
                "locator": self.images.locator(hit)}

    # ------------------------------------------------------------------ identity

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 with the run's and index's identity, the backend
        and the limits; 503 when the PostgreSQL archive cannot be reached."""
        status, backend = 200, {"kind": "index"}
        if self.archive is not None:
            backend = {"kind": "postgres", "table": getattr(self.archive, "table", None),
                       "geometry": getattr(self.archive, "geometry", None)}
            try:
                with self._archive_lock:
                    backend["count"] = int(self.archive.count())
            except Exception as e:  # pylint: disable=broad-except
                status = 503
                backend["error"] = f"the PostgreSQL archive cannot be reached ({type(e).__name__})"
        return status, {"status": "ok" if status == 200 else "unavailable", "run": self._run,
                        "index": self._index_identity, "backend": backend,
                        "limits": dataclasses.asdict(self.limits)}


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise RequestError(404, f"this item's image file cannot be read ({type(e).__name__})") from None
