r"""Searches an indexed image archive with a typed sentence or an image.

    rs-hashing search --run_dir=runs/demo/run --index=tiles.index \
        --text="a river crosses farmland" --k=10 --contact_sheet=river.html
    rs-hashing search --run_dir=runs/demo/run --index=tiles.index --image=query.png

Prints the top k images with their Hamming distances (ties by id, i.e. by position in
the archive listing) and, with --contact_sheet, writes them as a PNG or HTML sheet. The
index must have been made by `rs-hashing index` with the same run.
"""

from absl import flags
import keras

from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index import archive_indexing
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
    return ["run_dir", "index", "text", "image", "k", "nprobe", "contact_sheet", "image_root"]


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
        print(f"query: {query}  ({index.count} images, {index.structure} index, {model.bits} bits)")
        for rank, hit in enumerate(hits, start=1):
            extra = "".join(f"  {key}={hit[key]}" for key in ("class", "caption") if hit.get(key))
            print(f"  {rank:>3}. {hit.get('file', hit['id'])!s:<40} hamming={hit['hamming']}{extra}")
        if FLAGS.contact_sheet:
            root = FLAGS.image_root or index.info.get("image_root", "")
            write_contact_sheet(hits, root, FLAGS.contact_sheet, title=f"{query}: top {len(hits)}")
            print(f"contact sheet: {FLAGS.contact_sheet}")
    except USER_ERRORS as e:
        exit_with_error(e)
