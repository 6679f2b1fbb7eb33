import numpy as np
import pytest
from PIL import Image

from rs_hashing.index.contact_sheet import write_contact_sheet


def _hits(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0)]):
        Image.fromarray(np.full((40, 60, 3), colour, np.uint8)).save(tmp_path / f"img_{i}.png")
    return [{"id": 0, "hamming": 0, "file": "img_0.png", "caption": "a red <roof>", "class": "roof"},
            {"id": 5, "hamming": 3, "file": "img_1.png"},
            {"id": 9, "hamming": 7, "file": "gone.png"}]


def test_png_sheet_shows_the_images_in_rank_order(tmp_path):
    path = write_contact_sheet(_hits(tmp_path), str(tmp_path), str(tmp_path / "sheet.png"),
                               title="query", columns=2, thumbnail_size=60)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    # 2 columns of 60 + 8 px cells, 2 rows; the first cell holds the red image.
    assert sheet.shape[1] == 2 * 68 + 8 and sheet.shape[0] > 2 * 60
    red = sheet[:, :76][np.all(sheet[:, :76] == (255, 0, 0), axis=-1)]
    green = sheet[:, 76:][np.all(sheet[:, 76:] == (0, 255, 0), axis=-1)]
    assert len(red) == 60 * 40 and len(green) == 60 * 40  # thumbnails keep the aspect ratio


def test_html_sheet_embeds_thumbnails_and_escapes_text(tmp_path):
    path = write_contact_sheet(_hits(tmp_path), str(tmp_path), str(tmp_path / "sheet.html"),
                               title="text 'beach & sea'")
    page = open(path, encoding="utf-8").read()
    assert page.count("data:image/jpeg;base64,") == 3
    assert "1. img_0.png" in page and "hamming 3" in page and "3. gone.png" in page
    assert "a red &lt;roof&gt;" in page and "beach &amp; sea" in page
    assert "not found:" in page and "gone.png" in page


def test_other_formats_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.png or \.html"):
        write_contact_sheet([], str(tmp_path), str(tmp_path / "sheet.jpg"))
