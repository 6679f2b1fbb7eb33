"""Contact sheets of search results: the returned images in rank order, as PNG or HTML.

Each cell shows the image, its rank, file name and Hamming distance (and caption when
the index has one). An image that cannot be read gets a grey cell that says so, so a
moved archive still gives a readable sheet. The HTML page embeds its thumbnails, so it
can be mailed or moved on its own.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from rs_hashing.geo.raster_image import read_raster_image
from rs_hashing.image_files import RASTER_EXTENSIONS

_FORMATS = (".png", ".html")
_BACKGROUND = (255, 255, 255)
_MISSING_FILL = (200, 200, 200)
_TEXT = (20, 20, 20)


def _thumbnail(path: str, size: int) -> tuple[Image.Image, bool]:
    """The image fitted into size x size (aspect kept), and whether it could be read."""
    try:
        if path.lower().endswith(RASTER_EXTENSIONS):  # 16-bit and multiband: the contract
            image = Image.fromarray(read_raster_image(path))
        else:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        image.thumbnail((size, size))
        return image, True
    except (OSError, ValueError):
        return Image.new("RGB", (size, size), _MISSING_FILL), False


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(1, width - 1)] + "~"


def _labels(rank: int, hit: Mapping[str, Any]) -> list[str]:
    lines = [f"{rank}. {hit.get('file', hit.get('id'))}", f"hamming {hit.get('hamming')}"]
    if hit.get("class"):
        lines[-1] += f"  {hit['class']}"
    if hit.get("caption"):
        lines.append(str(hit["caption"]))
    return lines


def _write_png(hits, paths, out_path, title, columns, size):
    font = ImageFont.load_default()
    line_height = 13
    label_lines = 3
    pad = 8
    rows = max(1, math.ceil(len(hits) / columns))
    cell_w, cell_h = size + pad, size + pad + label_lines * line_height
    sheet = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + 2 * pad + line_height),
                      _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad // 2), _clip(title, (columns * cell_w) // 6), fill=_TEXT, font=font)
    chars = max(8, size // 6)  # the default bitmap font is about 6 px per character
    for i, (hit, path) in enumerate(zip(hits, paths)):
        x = pad + (i % columns) * cell_w
        y = pad + line_height + (i // columns) * cell_h
        image, readable = _thumbnail(path, size)
        sheet.paste(image, (x + (size - image.width) // 2, y + (size - image.height) // 2))
        if not readable:
            draw.text((x + 6, y + size // 2 - 6), "image not found", fill=_TEXT, font=font)
        for line_no, line in enumerate(_labels(i + 1, hit)):
            draw.text((x, y + size + 2 + line_no * line_height), _clip(line, chars),
                      fill=_TEXT, font=font)
    sheet.save(out_path)


def _write_html(hits, paths, out_path, title, size):
    cells = []
    for i, (hit, path) in enumerate(zip(hits, paths)):
        image, readable = _thumbnail(path, size)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        source = base64.b64encode(buffer.getvalue()).decode("ascii")
        label = "<br>".join(html.escape(line) for line in _labels(i + 1, hit))
        note = "" if readable else f"<br><em>not found: {html.escape(path)}</em>"
        cells.append(f'<figure><img src="data:image/jpeg;base64,{source}" '
                     f'alt="{html.escape(str(hit.get("file", "")))}">'
                     f"<figcaption>{label}{note}</figcaption></figure>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:16px}"
        "figure{display:inline-block;vertical-align:top;margin:6px;width:%dpx}"
        "img{max-width:%dpx;max-height:%dpx}figcaption{font-size:12px;word-wrap:break-word}"
        "</style></head><body>\n<h2>%s</h2>\n%s\n</body></html>\n"
        % (size, size, size, html.escape(title), "\n".join(cells)))
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(page)


def write_contact_sheet(hits: Sequence[Mapping[str, Any]], image_root: str, out_path: str,
                        title: str = "", columns: int = 5, thumbnail_size: int = 160) -> str:
    """Writes the hits' images as a PNG or HTML contact sheet (chosen by extension).

    Args:
        hits: search results in rank order, each with "file" (relative to
            `image_root`) and "hamming" (also shown: "class", "caption").
        image_root: folder the file names are relative to.
        out_path: a .png or .html file.
        title: heading (e.g. the query).
        columns: images per row (PNG).
        thumbnail_size: longest side of each image, in pixels.

    Returns:
        `out_path`.
    """
    extension = os.path.splitext(out_path)[1].lower()
    if extension not in _FORMATS:
        raise ValueError(f"{out_path}: a contact sheet is a .png or .html file")
    if columns < 1 or thumbnail_size < 16:
        raise ValueError(f"columns={columns} must be >= 1 and thumbnail_size={thumbnail_size} >= 16")
    paths = [os.path.join(image_root, str(hit.get("file", ""))) for hit in hits]
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    if extension == ".png":
        _write_png(list(hits), paths, out_path, title, columns, thumbnail_size)
    else:
        _write_html(list(hits), paths, out_path, title, thumbnail_size)
    return out_path
