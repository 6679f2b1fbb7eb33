"""End to end: the real `train.index_archive` and `train.search` entry points on a tiny
run (tiny_cnn and tiny_bert encoders, 8-bit heads)."""


from rs_hashing.index.hamming_index import HammingIndex
from tests import testing
from tests import tiny_run

def _run(*args):
    return testing.run_module(*args)


def test_index_a_folder_then_search_it_by_image_with_a_contact_sheet(tmp_path):
    run = tiny_run.make_tiny_run(str(tmp_path / "run"))
    names = tiny_run.write_tile_folder(str(tmp_path / "images"), 9)
    out = str(tmp_path / "archive.index")
    result = _run("train.index_archive", f"--run_dir={run}", f"--images={tmp_path / 'images'}",
                  f"--index={out}", "--encode_batch_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "indexing 9 images" in result.stdout and "flat index" in result.stdout
    index = HammingIndex.load(out, bits=8)
    assert index.count == 9 and [m["file"] for m in index.metadata(range(9))] == names

    sheet = str(tmp_path / "sheet.html")
    result = _run("train.search", f"--run_dir={run}", f"--index={out}",
                  f"--image={tmp_path / 'images' / 'tile_04.png'}", "--k=9",
                  f"--contact_sheet={sheet}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "hamming=" in line]
    assert len(lines) == 9 and lines[0].split()[0] == "1."
    distances = [int(line.split("hamming=")[1].split()[0]) for line in lines]
    assert distances == sorted(distances) and distances[0] == 0
    assert any("tile_04.png" in line and "hamming=0" in line for line in lines)
    page = open(sheet, encoding="utf-8").read()
    assert page.count("data:image/jpeg;base64,") == 9 and "not found" not in page


def test_index_archive_errors_are_one_line(tmp_path):
    run = tiny_run.make_tiny_run(str(tmp_path / "run"))
    result = _run("train.index_archive", f"--run_dir={run}", f"--images={tmp_path / 'none'}",
                  f"--index={tmp_path / 'a.index'}")
    assert result.returncode != 0
    assert "error: " in result.stderr and "none: no such image file or folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, no start-up logging
