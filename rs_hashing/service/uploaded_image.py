"""An uploaded query image, checked before any pixel is decoded: its type from its first
bytes, its size from its header."""

from __future__ import annotations

import dataclasses
import io
import warnings

from PIL import Image

from rs_hashing.service.request_error import RequestError
from rs_hashing.service.service_limits import ServiceLimits

# First bytes of the formats the run's image reader decodes (JPEG, PNG, BMP and GIF by
# TensorFlow, TIFF/GeoTIFF by rasterio), as for image files everywhere else.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
               (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
ACCEPTED = "JPEG, PNG, GeoTIFF/TIFF, BMP or GIF"


def _tiff_size(data: bytes) -> tuple[int, int]:
    import rasterio  # pylint: disable=import-outside-toplevel
    from rasterio.io import MemoryFile  # pylint: disable=import-outside-toplevel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with MemoryFile(data) as memory, memory.open() as raster:
            return raster.width, raster.height


@dataclasses.dataclass(frozen=True)
class UploadedImage:
    """An upload that passed the checks.

    Attributes:
        data: the file's bytes.
        format: "JPEG", "PNG", "TIFF", "BMP" or "GIF".
        width, height: from the header.
        name: the file name the client gave (for the answer only; never opened).
    """

    data: bytes
    format: str
    width: int
    height: int
    name: str = ""

    @classmethod
    def inspect(cls, data: bytes, limits: ServiceLimits, name: str = "") -> "UploadedImage":
        """Checks an upload's size, type and pixel count.

        Raises:
            RequestError: 400 for an empty upload, 413 for one over
                `limits.max_upload_bytes` or `limits.max_image_pixels`, 415 for bytes
                that are not an image of an accepted type or whose header is unreadable.
        """
        if not data:
            raise RequestError(400, "the uploaded image is empty")
        if len(data) > limits.max_upload_bytes:
            raise RequestError(413, f"the upload is {len(data):,} bytes; this service takes images "
                                    f"of at most {limits.max_upload_bytes:,} bytes")
        image_format = next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), None)
        if image_format is None:
            raise RequestError(415, f"the upload is not an image this service reads ({ACCEPTED})")
        try:
            if image_format == "TIFF":
                width, height = _tiff_size(data)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(io.BytesIO(data)) as image:  # reads the header only
                        width, height = image.size
        except Image.DecompressionBombError:
            raise RequestError(413, f"the uploaded {image_format} image has too many pixels "
                                    f"(at most {limits.max_image_pixels:,})") from None
        except Exception as e:  # pylint: disable=broad-except  (any reader error: not an image)
            raise RequestError(415, f"the uploaded {image_format} image cannot be read "
                                    f"({type(e).__name__})") from None
        if width * height > limits.max_image_pixels:
            raise RequestError(413, f"the uploaded image is {width} x {height} = {width * height:,} "
                                    f"pixels; this service takes at most {limits.max_image_pixels:,}")
        return cls(data, image_format, int(width), int(height), name)
