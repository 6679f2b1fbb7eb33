"""The search service's web app: the JSON API, the thumbnails and the search page.

    app = create_app(HashingModel.from_run("runs/demo/run"), index)
    uvicorn.run(app, host="127.0.0.1", port=8080)      # what `rs-hashing serve` does

Routes (the schema is at /openapi.json):

    GET  /                        the search page (its scripts and styles under /static)
    GET  /api/search?text=...&k=20[&bbox=min_lon,min_lat,max_lon,max_lat&after=...&before=...]
    POST /api/search?k=20[&...]   an image as multipart field "image" (or as the raw body)
    GET  /api/similar/{id}?k=20   items like an indexed one
    GET  /api/health              the run's and the index's identity
    GET  /thumbnails/{id}         PNG of an indexed item
    GET  /quicklooks/{scene_id}   PNG of an indexed scene, decimated

Refused requests get a JSON body {"error": "..."}: 400 malformed, 404 unknown item,
413 too large, 415 not an image, 422 a parameter out of its range, 503 busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from rs_hashing import __version__
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index.hamming_index import HammingIndex
from rs_hashing.service.api_models import ErrorResponse, HealthResponse, SearchResponse
from rs_hashing.service.request_error import RequestError
from rs_hashing.service.search_filter import SearchFilter
from rs_hashing.service.search_service import SearchService
from rs_hashing.service.service_limits import ServiceLimits
from rs_hashing.service.uploaded_image import ACCEPTED

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_LOG = logging.getLogger(__name__)
# Room for the multipart framing around an uploaded file (boundaries, headers, k).
_MULTIPART_OVERHEAD = 64 * 1024
# The page loads nothing from elsewhere: every script, style and image is the service's.
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
                 "Cache-Control": "no-cache"}
_IMAGE_CACHE = "public, max-age=3600"
_ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)}
# Absent query fields (a text query's "image", ...) are left out of answers; hits' null
# footprints are kept (they say "no geography").
_SEARCH_ROUTE = {"response_model": SearchResponse, "response_model_exclude_unset": True,
                 "responses": _ERRORS, "tags": ["search"]}
_IMAGE_ROUTE = {"response_class": Response, "tags": ["images"],
                "responses": {200: {"content": {"image/png": {}}}, 404: {"model": ErrorResponse}}}
_BBOX = Query(None, description="min_lon,min_lat,max_lon,max_lat (EPSG:4326): keep items whose "
                                "footprint intersects this box.", examples=["-75.9,37.2,-75.6,37.5"])
_AFTER = Query(None, description="Keep items acquired at or after this ISO 8601 time.",
               examples=["2021-05-03"])
_BEFORE = Query(None, description="Keep items acquired at or before this ISO 8601 time.",
                examples=["2021-05-03T23:59:59Z"])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _item_id(text: str) -> int:
    """An id from a URL; anything that is not an id the index could hold is 404."""
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) >= 2 ** 63:
        raise RequestError(404, f"no item with id {text[:40]!r}")
    return int(text)


async def _upload(request: Request, limits: ServiceLimits) -> tuple[bytes, str]:
    """The uploaded image's bytes and file name, read no further than the limit allows."""
    cap = limits.max_upload_bytes + _MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise RequestError(413, f"the upload is {int(declared):,} bytes; this service takes images of "
                                f"at most {limits.max_upload_bytes:,} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > cap:
                raise RequestError(413, f"the upload is over {cap:,} bytes; this service takes images "
                                        f"of at most {limits.max_upload_bytes:,} bytes")
    except ClientDisconnect:
        raise RequestError(400, "the client left before the upload ended") from None
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return bytes(body), ""
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as e:  # pylint: disable=broad-except  (python-multipart's parse errors)
        raise RequestError(400, f"the multipart body cannot be parsed ({e})") from None
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise RequestError(400, "give the image as a multipart file field named 'image'")
    return await upload.read(), os.path.basename(upload.filename or "")


def create_app(model: HashingModel, index: HammingIndex, archive: Any = None,
               limits: ServiceLimits | None = None, image_root: str | None = None,
               index_path: str | None = None) -> FastAPI:
    """The search service over one indexed archive (see the module docstring).

    Args:
        model: the trained run the index was made with (loaded once, shared by all
            requests; its TensorFlow work runs on one encoder thread).
        index: the archive's index.
        archive: optionally a `PostgresArchive` with the same items under the same ids:
            searches then run there, bbox and time filters in SQL.
        limits: request bounds (`ServiceLimits()` by default).
        image_root: the archive's image folder if it moved since indexing.
        index_path: the index file, named with its SHA-256 in /api/health.
    """
    limits = limits or ServiceLimits()
    service = SearchService(model, index, archive, limits, image_root, index_path)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        # The port opens once TensorFlow has traced its graphs, so that no query (and no
        # readiness probe) waits seconds for the first trace.
        await asyncio.gather(*(asyncio.wrap_future(future) for future in service.worker.warm_up()))
        yield
        service.close()

    app = FastAPI(
        title="rs-hashing search", version=__version__, lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN; the page must work offline,
        # so only the OpenAPI document itself is served.
        docs_url=None, redoc_url=None, openapi_url="/openapi.json",
        description="Cross-modal hashing search over a remote-sensing archive: a typed "
                    "sentence or an image in, the nearest archive items by Hamming distance out.")
    app.state.service = service

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, error.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = ["{}: {}".format(".".join(str(part) for part in problem["loc"][1:]) or "request",
                                    problem["msg"]) for problem in error.errors()]
        return _error(422, "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        _LOG.exception("%s %s failed", request.method, request.url.path, exc_info=error)
        return _error(500, f"the service failed on this request ({type(error).__name__})")

    k_query = Query(None, ge=1, le=limits.max_k,
                    description=f"Results wanted, 1 to {limits.max_k} (default {limits.default_k}).")

    @app.get("/api/search", **_SEARCH_ROUTE,
             summary="Search by a typed sentence")
    async def search_text(
            text: str | None = Query(None, description=f"The sentence, at most {limits.max_text_chars} "
                                                       "characters.", examples=["a river crosses farmland"]),
            k: int | None = k_query, bbox: str | None = _BBOX, after: str | None = _AFTER,
            before: str | None = _BEFORE) -> dict[str, Any]:
        return await service.search_text(text, k, SearchFilter.parse(bbox, after, before))

    @app.post("/api/search", **_SEARCH_ROUTE,
              summary="Search by an uploaded image",
              description=f"The image ({ACCEPTED}, at most {limits.max_upload_bytes:,} bytes and "
                          f"{limits.max_image_pixels:,} pixels) as a multipart file field 'image', or "
                          "as the raw request body. It is decoded and resized by the run's own reader, "
                          "as every archive image was.",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                      "image": {"type": "string", "format": "binary"}}}},
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def search_image(request: Request, k: int | None = k_query, bbox: str | None = _BBOX,
                           after: str | None = _AFTER, before: str | None = _BEFORE) -> dict[str, Any]:
        search_filter = SearchFilter.parse(bbox, after, before)
        service.check_k(k)
        data, name = await _upload(request, limits)
        return await service.search_image(data, name, k, search_filter)

    @app.get("/api/similar/{item_id}", **_SEARCH_ROUTE,
             summary="Items like an indexed one (more like this)")
    async def similar(item_id: str, k: int | None = k_query, bbox: str | None = _BBOX,
                      after: str | None = _AFTER, before: str | None = _BEFORE) -> dict[str, Any]:
        return await service.search_similar(_item_id(item_id), k, SearchFilter.parse(bbox, after, before))

    @app.get("/api/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}},
             tags=["service"], summary="The run and index this service answers with")
    async def health() -> JSONResponse:
        status, body = await run_in_threadpool(service.health)
        return JSONResponse(body, status_code=status)

    @app.get("/thumbnails/{item_id}", **_IMAGE_ROUTE, summary="PNG of an indexed item")
    async def thumbnail(item_id: str) -> Response:
        png = await run_in_threadpool(service.images.thumbnail_png, _item_id(item_id))
        return Response(png, media_type="image/png", headers={"Cache-Control": _IMAGE_CACHE})

    @app.get("/quicklooks/{scene_id}", **_IMAGE_ROUTE, summary="PNG of an indexed scene, decimated")
    async def quicklook(scene_id: str) -> Response:
        png = await run_in_threadpool(service.images.quicklook_png, scene_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": _IMAGE_CACHE})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html",
                            headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
