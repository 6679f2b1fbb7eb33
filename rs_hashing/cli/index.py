r"""Indexes an image archive with a trained run, for `rs-hashing search`.

    rs-hashing index --run_dir=runs/demo/run --images=/data/tiles --index=tiles.index
    rs-hashing index --run_dir=runs/rsicd --preset=rsicd --data_dir=../shared/data/rsicd \
        --index=rsicd.index
    rs-hashing index --run_dir=runs/demo/run --scenes=items.json --bands=B04,B03,B02 \
        --tile_size=256 --index=scenes.index

The archive is Earth-observation scenes (--scenes: GeoTIFF/COG files, folders of them,
or local STAC Item / ItemCollection JSON files), cut into tiles that keep their
geography (footprint, window, time); or image files and folders (--images, folders
searched recursively); or a caption dataset (--preset / --dataset / --data_dir /
--caption_file / --image_dir; with none of them, the dataset the run was trained on),
whose captions and classes are kept with each image. Images pass through the run's image encoder and image hash head in
batches with a progress bar; the index is exact up to --approximate_above images.
"""

from absl import flags
import keras

from rs_hashing import config as config_lib
from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.config import RADIOMETRIES
from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.tiler import UNITS, Tiler
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index import archive_indexing
from rs_hashing.index.hamming_index import DEFAULT_APPROXIMATE_ABOVE, KINDS

DEFAULT_PRESET = None
_DATA_FLAGS = ("dataset", "data_dir", "caption_file", "image_dir", "label_file")


def define_flags() -> list[str]:
    flags.DEFINE_string("run_dir", None, "Finished run folder (config.json, model.weights.h5, ...).",
                        required=True)
    flags.DEFINE_string("index", None, "Index file to write.", required=True)
    flags.DEFINE_list("images", None, "Image files or folders (searched recursively) to index, "
                      "instead of a dataset.")
    flags.DEFINE_list("scenes", None, "GeoTIFF/COG files, folders of them, or STAC Item / "
                      "ItemCollection JSON files to tile and index, instead of a dataset.")
    flags.DEFINE_list("bands", None, "With --scenes: the R,G,B bands, 1-based indexes of a file "
                      "(4,3,2) or STAC asset keys (B04,B03,B02); unset: the first three.")
    flags.DEFINE_float("nodata", None, "With --scenes: the nodata value when the files do not say.")
    flags.DEFINE_float("tile_size", 256, "With --scenes: tile size, in --tile_unit.", lower_bound=0)
    flags.DEFINE_float("tile_stride", None, "With --scenes: step between tiles (unset: the size, no "
                       "overlap).", lower_bound=0)
    flags.DEFINE_enum("tile_unit", "px", list(UNITS), "With --scenes: px, or m (metres, rounded per "
                      "scene to whole pixels).")
    flags.DEFINE_float("min_valid", 0.5, "With --scenes: tiles with a smaller share of valid "
                       "(non-nodata) pixels are skipped and counted.", lower_bound=0, upper_bound=1)
    flags.DEFINE_enum("radiometry", None, list(RADIOMETRIES), "With --scenes: fixed (the run's "
                      "16-bit range, as in training) or percentile (each scene's p2-p98); "
                      "default: the run's.")
    flags.DEFINE_enum("preset", None, list(config_lib.PRESETS), "Dataset preset to index (unset: "
                      "the run's own dataset).")
    flags.DEFINE_enum("dataset", None, list(config_lib.DATASETS), "Dataset layout to index.")
    flags.DEFINE_string("data_dir", None, "Folder holding the caption file and the image folder.")
    flags.DEFINE_string("caption_file", None, "Caption JSON or CSV (default: the one in --data_dir).")
    flags.DEFINE_string("image_dir", None, "Image folder (default: the usual name in --data_dir).")
    flags.DEFINE_string("label_file", None, "filename,label CSV that overrides the scene classes.")
    flags.DEFINE_integer("encode_batch_size", None, "Images per encoder call (default: the run's).",
                         lower_bound=1)
    flags.DEFINE_enum("kind", "auto", list(KINDS), "Exact (flat), approximate (ivf) or auto.")
    flags.DEFINE_integer("approximate_above", DEFAULT_APPROXIMATE_ABOVE,
                         "With --kind=auto: images above which the index is approximate.")
    flags.DEFINE_integer("nlist", None, "IVF lists (default: about sqrt(images)).", lower_bound=1)
    flags.DEFINE_integer("nprobe", None, "IVF lists scanned per query.", lower_bound=1)
    return ["run_dir", "index", "images", "scenes", "bands", "nodata", "tile_size", "tile_stride",
            "tile_unit", "min_valid", "radiometry", "preset", *_DATA_FLAGS, "encode_batch_size", "kind",
            "approximate_above", "nlist", "nprobe"]


def _index_scenes(model: HashingModel):
    FLAGS = flags.FLAGS
    features = model.config.features
    radiometry = Radiometry(mode=FLAGS.radiometry or features.radiometry,
                            range16=(features.range16_low, features.range16_high))
    tiler = Tiler(size=FLAGS.tile_size, stride=FLAGS.tile_stride, unit=FLAGS.tile_unit,
                  min_valid=FLAGS.min_valid, radiometry=radiometry)
    bands = [int(band) if band.isdigit() else band for band in FLAGS.bands] if FLAGS.bands else None
    print(f"tiling {', '.join(FLAGS.scenes)} into {FLAGS.tile_size:g} {FLAGS.tile_unit} tiles with "
          f"{model.bits}-bit codes", flush=True)
    return archive_indexing.index_scenes(
        model, FLAGS.scenes, FLAGS.index, tiler, bands=bands, nodata=FLAGS.nodata,
        batch_size=FLAGS.encode_batch_size, progress=True, kind=FLAGS.kind, nlist=FLAGS.nlist,
        nprobe=FLAGS.nprobe, approximate_above=FLAGS.approximate_above)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    try:
        model = HashingModel.from_run(FLAGS.run_dir)
        keras.utils.set_random_seed(model.config.train.seed)  # Seeded test encoders are rebuilt alike.
        if FLAGS.scenes and FLAGS.images:
            raise ValueError("give --scenes or --images, not both")
        if FLAGS.scenes:
            index = _index_scenes(model)
            print(f"tiling: {index.info['tiling']}")
            print(f"wrote {FLAGS.index}: {index.count} tiles, {index.structure} index, encoding took "
                  f"{index.info['encode_seconds']} s")
            return
        if FLAGS.images:
            root, items = archive_indexing.files_items(FLAGS.images)
            source = f"images {', '.join(FLAGS.images)}"
        else:
            data = archive_indexing.data_config_for_archive(
                model.config, FLAGS.preset, {name: FLAGS[name].value for name in _DATA_FLAGS})
            root, items = archive_indexing.dataset_items(data)
            source = f"dataset {data.dataset} {data.data_dir or data.caption_file}".strip()
        print(f"indexing {len(items)} images from {root} with {model.bits}-bit codes", flush=True)
        index = archive_indexing.index_archive(
            model, root, items, FLAGS.index, batch_size=FLAGS.encode_batch_size, progress=True,
            kind=FLAGS.kind, nlist=FLAGS.nlist, nprobe=FLAGS.nprobe, source=source,
            approximate_above=FLAGS.approximate_above)
    except USER_ERRORS as e:
        exit_with_error(e)
    print(f"wrote {FLAGS.index}: {index.count} images, {index.structure} index "
          f"({index.nbytes / 2**20:.1f} MiB of codes), encoding took {index.info['encode_seconds']} s")
