r"""Serves an indexed archive: a search page and a JSON API on one port.

    rs-hashing serve --run_dir=runs/demo/run --index=runs/demo/scenes.index
    rs-hashing serve --run_dir=RUN --index=tiles.index --postgres=postgresql://... --port=8080

Open http://127.0.0.1:8080/ for the page (type a sentence or drop an image; "more like
this" on every hit; scene tiles drawn over their scene's quicklook). The API:

    GET  /api/search?text=...&k=20[&bbox=min_lon,min_lat,max_lon,max_lat&after=...&before=...]
    POST /api/search?k=20          an image (JPEG, PNG, GeoTIFF, ...) as multipart field "image"
    GET  /api/similar/{id}?k=20    items like an indexed one
    GET  /api/health               the run's and the index's identity
    GET  /thumbnails/{id}, /quicklooks/{scene_id}, /openapi.json (the schema)

The run and the index are loaded once. With --postgres every search runs in the shared
PostgreSQL archive (bbox and time filters in SQL), which must hold the index's items
under the same ids; the index still gives thumbnails and "more like this". The service
listens on 127.0.0.1 unless --host says otherwise; it has no authentication of its own,
so expose it beyond this machine only behind a proxy that authenticates.
"""

from absl import flags
import keras
import uvicorn

from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index import archive_indexing
from rs_hashing.index.postgres_archive import PostgresArchive
from rs_hashing.service import ServiceLimits, create_app

DEFAULT_PRESET = None
_LIMITS = ServiceLimits()


def define_flags() -> list[str]:
    flags.DEFINE_string("run_dir", None, "Finished run folder the index was made with.", required=True)
    flags.DEFINE_string("index", None, "Index file from `rs-hashing index`.", required=True)
    flags.DEFINE_string("postgres", None, "DSN of a PostgreSQL archive holding the index's items "
                        "(searches, with bbox/time filters, then run there).")
    flags.DEFINE_string("postgres_table", "rs_hashing_archive", "Table of the PostgreSQL archive.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
    flags.DEFINE_integer("port", 8080, "Port to listen on.", lower_bound=0, upper_bound=65535)
    flags.DEFINE_string("image_root", None, "Folder of the archive images, if it moved since indexing.")
    flags.DEFINE_integer("nprobe", None, "IVF lists scanned (approximate indexes only).", lower_bound=1)
    flags.DEFINE_integer("default_k", None, f"Results when a request names no k; unset: "
                         f"{_LIMITS.default_k}, or --max_k if lower.", lower_bound=1)
    flags.DEFINE_integer("max_k", _LIMITS.max_k, "Most results one request may ask for.", lower_bound=1)
    flags.DEFINE_integer("max_text_chars", _LIMITS.max_text_chars, "Longest typed query (characters).",
                         lower_bound=1)
    flags.DEFINE_integer("max_upload_bytes", _LIMITS.max_upload_bytes, "Largest uploaded image (bytes).",
                         lower_bound=1)
    flags.DEFINE_integer("max_image_pixels", _LIMITS.max_image_pixels, "Largest uploaded image "
                         "(width x height).", lower_bound=1)
    flags.DEFINE_integer("max_pending", _LIMITS.max_pending, "Queries that may wait for the encoder; "
                         "more are answered 503.", lower_bound=1)
    flags.DEFINE_bool("access_log", True, "Log every request.")
    return ["run_dir", "index", "postgres", "postgres_table", "host", "port", "image_root", "nprobe",
            "default_k", "max_k", "max_text_chars", "max_upload_bytes", "max_image_pixels", "max_pending",
            "access_log"]


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    archive = None
    try:
        limits = ServiceLimits(
            max_text_chars=FLAGS.max_text_chars, max_upload_bytes=FLAGS.max_upload_bytes,
            max_image_pixels=FLAGS.max_image_pixels, max_k=FLAGS.max_k,
            default_k=FLAGS.default_k or min(_LIMITS.default_k, FLAGS.max_k),
            max_pending=FLAGS.max_pending)
        model = HashingModel.from_run(FLAGS.run_dir)
        keras.utils.set_random_seed(model.config.train.seed)  # Seeded test encoders are rebuilt alike.
        index = archive_indexing.open_index(FLAGS.index, model)
        if FLAGS.nprobe:
            index.nprobe = FLAGS.nprobe
        if FLAGS.postgres:
            archive = PostgresArchive(FLAGS.postgres, bits=model.bits, table=FLAGS.postgres_table,
                                      create=False)
        app = create_app(model, index, archive=archive, limits=limits, image_root=FLAGS.image_root,
                         index_path=FLAGS.index)
    except (*USER_ERRORS, ModuleNotFoundError) as e:
        if archive is not None:
            archive.close()
        exit_with_error(e)
    except Exception as e:  # pylint: disable=broad-except  (psycopg's connection errors)
        if type(e).__module__.split(".")[0] != "psycopg":
            raise
        exit_with_error(ValueError(f"--postgres: cannot open the archive ({str(e).strip()})"))
    things = "tiles" if index.info.get("scenes") else "images"
    print(f"rs-hashing serve: {index.count} {things} of {FLAGS.index}, run {FLAGS.run_dir} "
          f"({model.bits} bits), {'PostgreSQL archive' if archive is not None else 'in-memory index'}; "
          f"page at http://{FLAGS.host}:{FLAGS.port}/", flush=True)
    uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, access_log=FLAGS.access_log, log_level="info")
