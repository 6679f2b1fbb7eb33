"""The JSON schema of the search API (the OpenAPI document at /openapi.json is made
from these types). This file is the API's one schema room, so it holds several small
classes, one per JSON object the API returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Locator(BaseModel):
    """Where a tile lies on its scene's quicklook."""

    scene_id: str
    quicklook: str = Field(description="URL of the scene's quicklook PNG.")
    box: list[float] = Field(min_length=4, max_length=4,
                             description="[x0, y0, x1, y1]: the tile's window as fractions of the "
                                         "scene's width and height, origin top left.")


class Hit(BaseModel):
    """One ranked result."""

    id: int = Field(description="The item's id in the archive.")
    rank: int = Field(description="1 for the nearest item.")
    hamming: int = Field(description="Hamming distance between the query's code and the item's.")
    metadata: dict[str, Any] = Field(description="What the index holds about the item: file, class "
                                                 "and caption for images; tile_id, scene_id, window, "
                                                 "acquired, bounds, crs and radiometry for tiles.")
    footprint: dict[str, Any] | None = Field(
        None, description="The item's footprint as a GeoJSON geometry in EPSG:4326 (lon/lat); "
                          "null where the archive has no geography.")
    thumbnail: str | None = Field(None, description="URL of a PNG of the item.")
    similar: str | None = Field(None, description="URL of the items like this one.")
    locator: Locator | None = Field(None, description="The tile on its scene's quicklook (tiles only).")


class SearchQuery(BaseModel):
    """The query as the service understood it."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["text", "image", "similar"]
    code: str = Field(description="The query's hash code, packed bits in hex (K/4 digits).")
    k: int
    text: str | None = None
    image: str | None = Field(None, description="The uploaded file's name as the client gave it.")
    id: int | None = Field(None, description="The item a 'similar' query started from.")
    bbox: list[float] | None = None
    after: str | None = None
    before: str | None = None


class SearchResponse(BaseModel):
    """Ranked hits, nearest first (ties by id)."""

    query: SearchQuery
    backend: Literal["index", "postgres"] = Field(description="Where the search ran: the in-memory "
                                                              "index or the PostgreSQL archive.")
    count: int
    hits: list[Hit]
    milliseconds: float = Field(description="Time the service took, encoding included.")


class ErrorResponse(BaseModel):
    """A refused request."""

    error: str = Field(description="What was wrong, naming the value and the rule.")


class HealthResponse(BaseModel):
    """The service's identity: which run and which index it answers with."""

    status: Literal["ok", "unavailable"]
    run: dict[str, Any] = Field(description="The run: folder, method, bits, weights fingerprint, "
                                            "encoders, metrics.")
    index: dict[str, Any] = Field(description="The index: file, SHA-256 (16 hex digits), count, bits, "
                                              "structure, the run and weights it was made with.")
    backend: dict[str, Any]
    limits: dict[str, int]
