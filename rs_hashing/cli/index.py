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

Beyond one process: --workers=N starts a local Dask cluster of N worker processes,
--scheduler=tcp://HOST:PORT uses a running one. The job is then planned (tasks of
--tiles_per_task windows or images), each worker reads and encodes its tasks and writes
shards beside the index (INDEX.shards/), and the shards are merged in plan order: the
codes are those of one process. A job killed and run again computes only the missing
shards. --postgres=DSN also bulk-loads the codes (and, for scenes, footprints and times)
into a PostgreSQL archive; without a cluster it runs the shard path in this process.

    rs-hashing index --run_dir=runs/demo/run --scenes=items.json --bands=B04,B03,B02 \
        --index=scenes.index --workers=8
    rs-hashing index ... --scheduler=tcp://10.0.0.5:8786 --postgres=postgresql://host/archive
"""

import logging

from absl import flags
import keras

from rs_hashing import config as config_lib
from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.config import RADIOMETRIES
from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.tiler import UNITS, Tiler
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index import archive_indexing, distributed_indexing
from rs_hashing.index.hamming_index import DEFAULT_APPROXIMATE_ABOVE, KINDS
from rs_hashing.index.indexing_plan import IndexingPlan

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
    flags.DEFINE_string("scheduler", None, "Address of a running Dask scheduler (tcp://HOST:PORT): its "
                        "workers read, encode and write shards; resumable. Every worker needs the run "
                        "folder and the scenes/images at the same paths.")
    flags.DEFINE_integer("workers", None, "Start a local Dask cluster of this many worker processes "
                         "(one thread each) for the job; resumable.", lower_bound=1)
    flags.DEFINE_string("postgres", None, "Also load the codes into this PostgreSQL archive (a psycopg "
                        "DSN); scenes with footprints and times (needs PostGIS).")
    flags.DEFINE_string("postgres_table", None, "With --postgres: the table (default: the archive's).")
    flags.DEFINE_integer("tiles_per_task", None, "With --workers/--scheduler/--postgres: windows or "
                         "images per task (default 256, rounded up to a multiple of the batch size).",
                         lower_bound=1)
    flags.DEFINE_integer("encode_threads", None, "TensorFlow threads per op in each encoding process "
                         "(default: TensorFlow's); codes are bit-identical across processes with the "
                         "same count.", lower_bound=1)
    flags.DEFINE_bool("keep_shards", False, "Keep INDEX.shards/ after the job (it is removed by default).")
    return ["run_dir", "index", "images", "scenes", "bands", "nodata", "tile_size", "tile_stride",
            "tile_unit", "min_valid", "radiometry", "preset", *_DATA_FLAGS, "encode_batch_size", "kind",
            "approximate_above", "nlist", "nprobe", "scheduler", "workers", "postgres", "postgres_table",
            "tiles_per_task", "encode_threads", "keep_shards"]


def _tiler_and_bands(model: HashingModel) -> tuple[Tiler, list | None]:
    FLAGS = flags.FLAGS
    features = model.config.features
    radiometry = Radiometry(mode=FLAGS.radiometry or features.radiometry,
                            range16=(features.range16_low, features.range16_high))
    tiler = Tiler(size=FLAGS.tile_size, stride=FLAGS.tile_stride, unit=FLAGS.tile_unit,
                  min_valid=FLAGS.min_valid, radiometry=radiometry)
    bands = [int(band) if band.isdigit() else band for band in FLAGS.bands] if FLAGS.bands else None
    return tiler, bands


def _index_scenes(model: HashingModel):
    FLAGS = flags.FLAGS
    tiler, bands = _tiler_and_bands(model)
    print(f"tiling {', '.join(FLAGS.scenes)} into {FLAGS.tile_size:g} {FLAGS.tile_unit} tiles with "
          f"{model.bits}-bit codes", flush=True)
    return archive_indexing.index_scenes(
        model, FLAGS.scenes, FLAGS.index, tiler, bands=bands, nodata=FLAGS.nodata,
        batch_size=FLAGS.encode_batch_size, progress=True, kind=FLAGS.kind, nlist=FLAGS.nlist,
        nprobe=FLAGS.nprobe, approximate_above=FLAGS.approximate_above, tiles_per_task=FLAGS.tiles_per_task)


def _archive_items(model: HashingModel):
    """(root, items, source) of --images, or of the dataset flags (the run's own dataset)."""
    FLAGS = flags.FLAGS
    if FLAGS.images:
        root, items = archive_indexing.files_items(FLAGS.images)
        return root, items, f"images {', '.join(FLAGS.images)}"
    data = archive_indexing.data_config_for_archive(
        model.config, FLAGS.preset, {name: FLAGS[name].value for name in _DATA_FLAGS})
    root, items = archive_indexing.dataset_items(data)
    return root, items, f"dataset {data.dataset} {data.data_dir or data.caption_file}".strip()


def _index_with_shards(model: HashingModel):
    """The plan/shard path: on a Dask cluster (--scheduler, --workers), or here."""
    FLAGS = flags.FLAGS
    if FLAGS.scenes:
        tiler, bands = _tiler_and_bands(model)
        print(f"planning {', '.join(FLAGS.scenes)} in {FLAGS.tile_size:g} {FLAGS.tile_unit} tiles with "
              f"{model.bits}-bit codes", flush=True)
        plan = IndexingPlan.for_scenes(model, FLAGS.scenes, tiler, bands=bands, nodata=FLAGS.nodata,
                                       batch_size=FLAGS.encode_batch_size, tiles_per_task=FLAGS.tiles_per_task,
                                       encode_threads=FLAGS.encode_threads)
    else:
        root, items, source = _archive_items(model)
        print(f"planning {len(items)} images from {root} with {model.bits}-bit codes", flush=True)
        plan = IndexingPlan.for_images(model, root, items, source=source, batch_size=FLAGS.encode_batch_size,
                                       tiles_per_task=FLAGS.tiles_per_task, encode_threads=FLAGS.encode_threads)
    if (FLAGS.scheduler or FLAGS.workers) and FLAGS.verbosity < 0:
        import distributed  # pylint: disable=import-outside-toplevel,unused-import

        # Its import sets its loggers to INFO (every worker start and stop); keep warnings
        # (a lost worker, a task retried) unless --verbosity asks for more.
        logging.getLogger("distributed").setLevel(logging.WARNING)
    with distributed_indexing.dask_client(FLAGS.scheduler, FLAGS.workers) as client:
        return distributed_indexing.index_plan(
            model, plan, FLAGS.index, client, progress=True, postgres=FLAGS.postgres,
            postgres_table=FLAGS.postgres_table, keep_shards=FLAGS.keep_shards, kind=FLAGS.kind,
            nlist=FLAGS.nlist, nprobe=FLAGS.nprobe, approximate_above=FLAGS.approximate_above)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    try:
        if FLAGS.scenes and FLAGS.images:
            raise ValueError("give --scenes or --images, not both")
        if FLAGS.scheduler and FLAGS.workers:
            raise ValueError("give --scheduler or --workers, not both")
        # Before this process runs any TensorFlow op (it is fixed from then on).
        distributed_indexing.use_encode_threads(FLAGS.encode_threads)
        model = HashingModel.from_run(FLAGS.run_dir)
        keras.utils.set_random_seed(model.config.train.seed)  # Seeded test encoders are rebuilt alike.
        if FLAGS.scheduler or FLAGS.workers or FLAGS.postgres:
            index = _index_with_shards(model)
            what = "tiles" if FLAGS.scenes else "images"
            if FLAGS.scenes:
                print(f"tiling: {index.info['tiling']}")
            print(f"wrote {FLAGS.index}: {index.count} {what}, {index.structure} index, the job took "
                  f"{index.info['encode_seconds']} s")
            return
        if FLAGS.scenes:
            index = _index_scenes(model)
            print(f"tiling: {index.info['tiling']}")
            print(f"wrote {FLAGS.index}: {index.count} tiles, {index.structure} index, encoding took "
                  f"{index.info['encode_seconds']} s")
            return
        root, items, source = _archive_items(model)
        print(f"indexing {len(items)} images from {root} with {model.bits}-bit codes", flush=True)
        index = archive_indexing.index_archive(
            model, root, items, FLAGS.index, batch_size=FLAGS.encode_batch_size, progress=True,
            kind=FLAGS.kind, nlist=FLAGS.nlist, nprobe=FLAGS.nprobe, source=source,
            approximate_above=FLAGS.approximate_above)
    except USER_ERRORS as e:
        exit_with_error(e)
    print(f"wrote {FLAGS.index}: {index.count} images, {index.structure} index "
          f"({index.nbytes / 2**20:.1f} MiB of codes), encoding took {index.info['encode_seconds']} s")
