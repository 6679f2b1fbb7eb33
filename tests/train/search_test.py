"""End to end: the real `train.search` entry point with a typed sentence (the index is
made in-process by the library, as train.index_archive would)."""


import keras
import numpy as np
from PIL import Image

from rs_hashing.hashing_model import HashingModel
from rs_hashing.index import archive_indexing
from tests import testing
from tests import tiny_run

def _search(*args):
    return testing.run_module("train.search", *args)


def test_text_search_prints_top_k_and_writes_a_png_sheet(tmp_path):
    run = tiny_run.make_tiny_run(str(tmp_path / "run"))
    tiny_run.write_tile_folder(str(tmp_path / "images"), 6)
    keras.utils.set_random_seed(0)
    encoder = HashingModel.from_run(run)
    root, items = archive_indexing.folder_items(str(tmp_path / "images"))
    for i, item in enumerate(items):
        item["caption"] = f"caption {i}"
    index_path = str(tmp_path / "a.index")
    archive_indexing.index_archive(encoder, root, items, index_path, progress=False)
    sheet = str(tmp_path / "sheet.png")
    result = _search(f"--run_dir={run}", f"--index={index_path}", "--text=a sandy beach", "--k=4",
                     f"--contact_sheet={sheet}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "query: text 'a sandy beach'  (6 images, flat index, 8 bits)" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "hamming=" in line]
    assert len(lines) == 4 and all("caption=caption" in line for line in lines)
    assert np.asarray(Image.open(sheet)).ndim == 3


def test_search_needs_exactly_one_query(tmp_path):
    result = _search(f"--run_dir={tmp_path}", f"--index={tmp_path / 'a.index'}")
    assert result.returncode != 0 and "give exactly one of --text and --image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, no start-up logging
