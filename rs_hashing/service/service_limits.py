"""What one request may ask of the search service; beyond it the answer is a 4xx."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
    """Bounds on requests, so that no query can take the service down.

    Attributes:
        max_text_chars: longest typed query (characters, after trimming).
        max_upload_bytes: largest uploaded image file.
        max_image_pixels: largest uploaded image (width x height), checked from its
            header before any pixel is decoded.
        default_k: results when a request names no k.
        max_k: most results one request may ask for.
        max_pending: queries waiting for the encoder; one more is answered 503.
        thumbnail_size: longest side of a thumbnail (px).
        cached_thumbnails: thumbnails kept in memory (least recently used dropped).
    """

    max_text_chars: int = 500
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    default_k: int = 20
    max_k: int = 100
    max_pending: int = 256
    thumbnail_size: int = 256
    cached_thumbnails: int = 2048

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field.name}={value!r} must be a positive int")
        if self.default_k > self.max_k:
            raise ValueError(f"default_k={self.default_k} is above max_k={self.max_k}")
