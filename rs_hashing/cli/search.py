r"""Searches an indexed image archive with a typed sentence or an image.

    rs-hashing search --run_dir=runs/demo/run --index=tiles.index \
        --text="a river crosses farmland" --k=10 --contact_sheet=river.html
    rs-hashing search --run_dir=runs/demo/run --index=tiles.index --image=query.png

Prints the top k images with their Hamming distances (ties by id, i.e. by position in
the archive listing), or with --format=geojson a GeoJSON FeatureCollection of them
(footprint, rank, distance, scene, window, time, thumbnail). --contact_sheet writes them
as a PNG or HTML sheet, --locator draws the hits' footprints over quicklooks of their
scenes, --thumbnails writes each hit's pixels as a PNG. The index must have been made by
`rs-hashing index` with the same run.
"""

import json
import os
import sys
import tempfile

from absl import flags
import keras
import numpy as np
from PIL import Image

from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.geo.raster_image import read_raster_image
from rs_hashing.hashing_model import HashingModel
from rs_hashing.image_files import RASTER_EXTENSIONS, is_image_file
from rs_hashing.index import archive_indexing, geo_results
from rs_hashing.index.contact_sheet import write_contact_sheet

DEFAULT_PRESET = None


def define_flags() -> list[str]:
    flags.DEFINE_string("run_dir", None, "Finished run folder the index was made with.", required=True)
    flags.DEFINE_string("index", None, "Index file from `rs-hashing index`.", required=True)
    flags.DEFINE_string("text", None, "Sentence to search with.")
    flags.DEFINE_string("image", None, "Image file to search with.")
    flags.DEFINE_integer("k", 10, "Results to show.", lower_bound=1)
    flags.DEFINE_integer("nprobe", None, "IVF lists scanned (approximate indexes only).", lower_bound=1)
    flags.DEFINE_string("contact_sheet", None, "Also write the results to this .png or .html file.")
    flags.DEFINE_string("image_root", None, "Folder of the archive images, if it moved since "
                        "indexing (for the contact sheet).")
    flags.DEFINE_enum("format", "text", ["text", "geojson"], "Results as text lines, or as a GeoJSON "
                      "FeatureCollection on standard output.")
    flags.DEFINE_string("thumbnails", None, "Folder to write each hit's pixels to as PNG (tiles are "
                        "read again from their scenes); GeoJSON features then name them.")
    flags.DEFINE_string("locator", None, "Also draw the hits' footprints over quicklooks of their "
                        "scenes into this .png (scene indexes).")
    return ["run_dir", "index", "text", "image", "k", "nprobe", "format", "contact_sheet", "thumbnails",
            "locator", "image_root"]


def _pixels(index, hit):
    """A hit's pixels: a tile read again from its scene, or its image file."""
    if "window" in hit and index.info.get("scenes"):
        return archive_indexing.tile_pixels(index.info, hit)
    path = os.path.join(flags.FLAGS.image_root or index.info.get("image_root", ""), hit["file"])
    if is_image_file(path) and path.lower().endswith(RASTER_EXTENSIONS):
        return read_raster_image(path)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _note(message: str) -> None:
    """Where a file went: on stderr when stdout carries GeoJSON."""
    print(message, file=sys.stderr if flags.FLAGS.format == "geojson" else sys.stdout)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    if (FLAGS.text is None) == (FLAGS.image is None):
        exit_with_error(ValueError("give exactly one of --text and --image"))
    try:
        model = HashingModel.from_run(FLAGS.run_dir)
        keras.utils.set_random_seed(model.config.train.seed)  # Seeded test encoders are rebuilt alike.
        index = archive_indexing.open_index(FLAGS.index, model)
        if FLAGS.nprobe:
            index.nprobe = FLAGS.nprobe
        hits = archive_indexing.search_archive(model, index, text=FLAGS.text, image=FLAGS.image, k=FLAGS.k)
        query = f"text {FLAGS.text!r}" if FLAGS.text is not None else f"image {FLAGS.image}"
        scenes = index.info.get("scenes")
        thumbnails = None
        if FLAGS.thumbnails or (scenes and FLAGS.contact_sheet):
            folder = FLAGS.thumbnails or tempfile.mkdtemp(prefix="rs_hashing_thumbnails_")
            thumbnails = geo_results.write_thumbnails(hits, lambda hit: _pixels(index, hit), folder)
        if FLAGS.format == "geojson":
            print(json.dumps(geo_results.to_geojson(hits, query, thumbnails), indent=2))
        else:
            print(f"query: {query}  ({index.count} {'tiles' if scenes else 'images'}, {index.structure} "
                  f"index, {model.bits} bits)")
            for rank, hit in enumerate(hits, start=1):
                extra = "".join(f"  {key}={hit[key]}" for key in ("class", "caption", "acquired") if hit.get(key))
                name = hit.get("file") or hit.get("tile_id") or hit["id"]
                print(f"  {rank:>3}. {name!s:<40} hamming={hit['hamming']}{extra}")
        if FLAGS.contact_sheet:
            if thumbnails is not None:  # Tiles: the sheet shows their thumbnails.
                hits = [dict(hit, file=path or "") for hit, path in zip(hits, thumbnails)]
                root = ""
            else:
                root = FLAGS.image_root or index.info.get("image_root", "")
            write_contact_sheet(hits, root, FLAGS.contact_sheet, title=f"{query}: top {len(hits)}")
            _note(f"contact sheet: {FLAGS.contact_sheet}")
        if FLAGS.locator:
            if not scenes:
                raise ValueError(f"{FLAGS.index}: holds no scenes (made with --images or a dataset); "
                                 "--locator needs an index made with --scenes")
            geo_results.write_locator(hits, scenes, FLAGS.locator, title=f"{query}: top {len(hits)}")
            _note(f"locator: {FLAGS.locator}")
    except USER_ERRORS as e:
        exit_with_error(e)
