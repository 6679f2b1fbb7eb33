r"""Searches an indexed image archive with a typed sentence or an image.

    python -m train.search --workdir=runs/demo/run --index=runs/demo/archive.index \
        --text="a river crosses farmland" --k=10 --contact_sheet=/tmp/river.html
    python -m train.search --workdir=runs/demo/run --index=runs/demo/archive.index \
        --image=query.png --contact_sheet=/tmp/similar.png

Prints the top k images with their Hamming distances (ties by id, i.e. by position in
the archive listing) and, with --contact_sheet, writes them as a PNG or HTML sheet. The
index must have been made by `train.index_archive` with the same run.
"""

from absl import app, flags
import keras

from rs_hashing.errors import DatasetError
from rs_hashing.index import archive_indexing
from rs_hashing.index.archive_encoder import ArchiveEncoder
from rs_hashing.index.contact_sheet import write_contact_sheet
from train import config_flags

flags.DEFINE_string("workdir", None, "Finished run folder the index was made with.",
                    required=True)
flags.DEFINE_string("index", None, "Index file from train.index_archive.", required=True)
flags.DEFINE_string("text", None, "Sentence to search with.")
flags.DEFINE_string("image", None, "Image file to search with.")
flags.DEFINE_integer("k", 10, "Results to show.", lower_bound=1)
flags.DEFINE_integer("nprobe", None, "IVF lists scanned (approximate indexes only).",
                     lower_bound=1)
flags.DEFINE_string("contact_sheet", None, "Also write the results to this .png or .html.")
flags.DEFINE_string("image_root", None, "Folder of the archive images, if it moved since "
                    "indexing (for the contact sheet).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if (FLAGS.text is None) == (FLAGS.image is None):
        config_flags.exit_with_error(ValueError("give exactly one of --text and --image"))
    try:
        encoder = ArchiveEncoder(FLAGS.workdir)
        keras.utils.set_random_seed(encoder.config.train.seed)
        index = archive_indexing.open_index(FLAGS.index, encoder)
        if FLAGS.nprobe:
            index.nprobe = FLAGS.nprobe
        hits = archive_indexing.search_archive(encoder, index, text=FLAGS.text,
                                               image=FLAGS.image, k=FLAGS.k)
        query = f"text {FLAGS.text!r}" if FLAGS.text is not None else f"image {FLAGS.image}"
        print(f"query: {query}  ({index.count} images, {index.structure} index, "
              f"{encoder.bits} bits)")
        for rank, hit in enumerate(hits, start=1):
            extra = "".join(f"  {key}={hit[key]}" for key in ("class", "caption") if hit.get(key))
            print(f"  {rank:>3}. {hit.get('file', hit['id'])!s:<40} hamming={hit['hamming']}{extra}")
        if FLAGS.contact_sheet:
            root = FLAGS.image_root or index.info.get("image_root", "")
            write_contact_sheet(hits, root, FLAGS.contact_sheet, title=f"{query}: top {len(hits)}")
            print(f"contact sheet: {FLAGS.contact_sheet}")
    except (DatasetError, FileNotFoundError, ValueError) as e:
        config_flags.exit_with_error(e)


if __name__ == "__main__":
    app.run(main)
