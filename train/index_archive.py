r"""Indexes an image archive with a trained run, for `train.search`.

    python -m train.index_archive --workdir=runs/demo/run --images=/data/tiles \
        --out=runs/demo/archive.index
    python -m train.index_archive --workdir=runs/rsicd --preset=rsicd \
        --data_dir=../shared/data/rsicd --out=runs/rsicd/archive.index

The archive is a folder of images (--images, searched recursively), or a caption
dataset (--preset / --dataset / --data_dir / --caption_file / --image_dir; with none of
them, the dataset the run was trained on), whose captions and classes are kept with
each image. Images pass through the run's image encoder and image hash head, in
batches with a progress bar; the index is exact up to --approximate_above images.
"""

from absl import app, flags
import keras

from rs_hashing import config as config_lib
from rs_hashing.errors import DatasetError
from rs_hashing.index import archive_indexing
from rs_hashing.index.archive_encoder import ArchiveEncoder
from rs_hashing.index.hamming_index import DEFAULT_APPROXIMATE_ABOVE, KINDS
from train import config_flags

flags.DEFINE_string("workdir", None, "Finished run folder (config.json, model.weights.h5).",
                    required=True)
flags.DEFINE_string("out", None, "Index file to write.", required=True)
flags.DEFINE_string("images", None, "Folder of images to index (instead of a dataset).")
flags.DEFINE_enum("preset", None, list(config_lib.PRESETS), "Dataset preset to index "
                  "(default: the run's own dataset).")
flags.DEFINE_enum("dataset", None, list(config_lib.DATASETS), "Overrides data.dataset.")
flags.DEFINE_string("data_dir", None, "Overrides data.data_dir.")
flags.DEFINE_string("caption_file", None, "Overrides data.caption_file.")
flags.DEFINE_string("image_dir", None, "Overrides data.image_dir.")
flags.DEFINE_string("label_file", None, "Overrides data.label_file.")
flags.DEFINE_integer("batch_size", None, "Images per encoder call (the run's "
                     "extract_batch_size by default).")
flags.DEFINE_enum("kind", "auto", list(KINDS), "Exact (flat), approximate (ivf) or auto.")
flags.DEFINE_integer("approximate_above", DEFAULT_APPROXIMATE_ABOVE,
                     "With --kind=auto: images above which the index is approximate.")
flags.DEFINE_integer("nlist", None, "IVF lists (default: about sqrt(images)).")
flags.DEFINE_integer("nprobe", None, "IVF lists scanned per query.")
FLAGS = flags.FLAGS
_DATA_FLAGS = ("dataset", "data_dir", "caption_file", "image_dir", "label_file")


def main(argv):
    del argv
    try:
        encoder = ArchiveEncoder(FLAGS.workdir)
        keras.utils.set_random_seed(encoder.config.train.seed)
        if FLAGS.images:
            root, items = archive_indexing.folder_items(FLAGS.images)
            source = f"folder {root}"
        else:
            data = archive_indexing.data_config_for_archive(
                encoder.config, FLAGS.preset, {name: FLAGS[name].value for name in _DATA_FLAGS})
            root, items = archive_indexing.dataset_items(data)
            source = f"dataset {data.dataset} {data.data_dir or data.caption_file}".strip()
        print(f"indexing {len(items)} images from {root} with {encoder.bits}-bit codes", flush=True)
        index = archive_indexing.index_archive(
            encoder, root, items, FLAGS.out, batch_size=FLAGS.batch_size, progress=True,
            kind=FLAGS.kind, nlist=FLAGS.nlist, nprobe=FLAGS.nprobe, source=source,
            approximate_above=FLAGS.approximate_above)
    except (DatasetError, FileNotFoundError, KeyError, ValueError) as e:
        config_flags.exit_with_error(e)
    print(f"wrote {FLAGS.out}: {index.count} images, {index.structure} index "
          f"({index.nbytes / 2**20:.1f} MiB of codes), encoding took "
          f"{index.info['encode_seconds']} s")


if __name__ == "__main__":
    app.run(main)
