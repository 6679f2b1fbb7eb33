r"""Tiling speed and peak memory on a full-size synthetic Sentinel-2-like COG.

    nice -n 10 python -m benchmarks.tiling_benchmark [--size=10980] [--tile=256] \
        [--stride=256] [--bands=3,2,1] [--radiometry=fixed] [--encode_run=RUN_DIR] \
        [--out=/tmp/tiling_benchmark.json]

1. A child process writes a `--size` x `--size` 4-band uint16 scene (UTM 33N, 10 m
   pixels, nodata 0) into a temporary folder, 512 rows at a time: smooth fields plus
   noise, with a nodata border (the left 6% of columns, the top 4% of rows and the
   bottom-right corner beyond a diagonal, as at a swath edge); then GDAL's COG driver
   copies it into a Cloud-Optimized GeoTIFF (512 x 512 blocks, DEFLATE, overviews).
   Neither step ever holds the scene whole; the child's own peak memory is printed.
2. This process tiles it with `rs_hashing.geo.tiler.Tiler` (`--tile` px tiles every
   `--stride` px, bands `--bands`, min_valid 0.5) and prints tiles/s, megapixels/s, the
   tiles yielded and skipped (nodata, partial edges), and peak memory: ru_maxrss of this
   process (which includes the interpreter and libraries; their share before tiling is
   printed too) and, with --tracemalloc, the peak of Python and NumPy allocations during
   tiling. Target: at most 2 GB whatever the scene size.
   `--scene=PATH` tiles an existing file instead.
3. With `--encode_run=RUN_DIR`, the tiles are also encoded in batches of
   `--encode_batch` through `HashingModel.from_run(RUN_DIR).encode_images`, and tiles/s
   and peak memory of tiling + encoding are printed.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np
from absl import app, flags

flags.DEFINE_integer("size", 10980, "Scene width and height in pixels (a Sentinel-2 10 m tile).")
flags.DEFINE_integer("tile", 256, "Tile size in pixels.")
flags.DEFINE_integer("stride", 256, "Tile stride in pixels.")
flags.DEFINE_list("bands", ["3", "2", "1"], "1-based band indices of R, G, B.")
flags.DEFINE_enum("radiometry", "fixed", ["fixed", "percentile"], "Radiometric contract mode.")
flags.DEFINE_integer("gdal_cache_mb", 256, "GDAL block cache cap while tiling (MiB).")
flags.DEFINE_bool("tracemalloc", True, "Also trace the peak of Python/NumPy allocations while tiling.")
flags.DEFINE_string("encode_run", None, "Also encode the tiles with this trained run.")
flags.DEFINE_integer("encode_batch", 64, "Tiles per encode_images call.")
flags.DEFINE_string("workdir", None, "Folder for the synthetic scene (a temporary one if None).")
flags.DEFINE_string("scene", None, "Tile this raster file instead of making a synthetic scene.")
flags.DEFINE_string("out", None, "Also write the results here as JSON.")
flags.DEFINE_string("write_scene", None, "Internal: write the synthetic scene to this path and exit.")
FLAGS = flags.FLAGS

BLOCK = 512
PIXEL_METRES = 10.0
ORIGIN = (300000.0, 5000040.0)  # UTM 33N, as a Sentinel-2 granule.
CRS = "EPSG:32633"


def log(message: str) -> None:
    print(message, flush=True)


def peak_rss_bytes(who: int = resource.RUSAGE_SELF) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # Linux reports KiB.


def synthetic_rows(size: int, row_off: int, rows: int) -> np.ndarray:
    """uint16 [4, rows, size] of the synthetic scene; 0 is nodata."""
    rng = np.random.default_rng(row_off)
    y = np.arange(row_off, row_off + rows, dtype=np.float32)[:, None]
    x = np.arange(size, dtype=np.float32)[None, :]
    bands = []
    for band in range(4):
        field = (1200.0 + 250.0 * band + 700.0 * np.sin(x / (310.0 + 40 * band)) * np.cos(y / 470.0)
                 + 400.0 * np.sin((x + y) / 1900.0))
        bands.append(field + rng.integers(0, 96, size=(rows, size)))
    data = np.clip(np.stack(bands), 1, 65535).astype(np.uint16)
    nodata = (x < 0.06 * size) | (y < 0.04 * size) | (x + y > 1.7 * size)
    data[:, np.broadcast_to(nodata, (rows, size))] = 0
    return data


def write_scene(path: str, size: int) -> None:
    """The synthetic scene as a COG at `path`, written in blocks of BLOCK rows."""
    import rasterio  # pylint: disable=import-outside-toplevel
    import rasterio.shutil  # pylint: disable=import-outside-toplevel
    from rasterio.transform import from_origin  # pylint: disable=import-outside-toplevel
    from rasterio.windows import Window  # pylint: disable=import-outside-toplevel

    staging = path + ".staging.tif"
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16", crs=CRS,
                   transform=from_origin(*ORIGIN, PIXEL_METRES, PIXEL_METRES), nodata=0, tiled=True,
                   blockxsize=BLOCK, blockysize=BLOCK, compress="deflate", predictor=2, bigtiff="if_safer")
    started = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=256 * 2**20, GDAL_NUM_THREADS="ALL_CPUS"):
        with rasterio.open(staging, "w", **profile) as staged:
            for row_off in range(0, size, BLOCK):
                rows = min(BLOCK, size - row_off)
                staged.write(synthetic_rows(size, row_off, rows), window=Window(0, row_off, size, rows))
        written = time.perf_counter() - started
        rasterio.shutil.copy(staging, path, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=BLOCK,
                             OVERVIEW_RESAMPLING="NEAREST", NUM_THREADS="ALL_CPUS", BIGTIFF="IF_SAFER")
    os.remove(staging)
    log(f"scene: {size} x {size} x 4 uint16 written in {written:.1f} s, COG copy with overviews "
        f"{time.perf_counter() - started - written:.1f} s, {os.path.getsize(path) / 2**20:.0f} MiB on disk; "
        f"writer peak RSS {peak_rss_bytes() / 2**20:.0f} MiB")


def expected_counts(width: int, height: int, tile: int, stride: int) -> tuple[int, int]:
    """(whole tiles, partial edge positions) of a width x height scene, by the arithmetic
    of the module docstring of rs_hashing.geo.tiler."""
    whole = [(length - tile) // stride + 1 if length >= tile else 0 for length in (width, height)]
    positions = [-(-length // stride) for length in (width, height)]
    return whole[0] * whole[1], positions[0] * positions[1] - whole[0] * whole[1]


def run_tiling(path: str, encode_run: str | None) -> dict:
    # pylint: disable=import-outside-toplevel
    from rs_hashing.geo.radiometry import Radiometry
    from rs_hashing.geo.scene import Scene
    from rs_hashing.geo.tiler import Tiler

    model = None
    if encode_run:
        from rs_hashing.hashing_model import HashingModel

        model = HashingModel.from_run(encode_run)
    scene = Scene.from_file(path, bands=tuple(int(band) for band in FLAGS.bands))
    tiler = Tiler(size=FLAGS.tile, stride=FLAGS.stride, radiometry=Radiometry(mode=FLAGS.radiometry),
                  gdal_cache_mb=FLAGS.gdal_cache_mb)
    rss_before = peak_rss_bytes()
    if FLAGS.tracemalloc:
        tracemalloc.start()
    batch, codes = [], 0
    started = time.perf_counter()
    tiling = tiler.tiles(scene)
    for tile in tiling:
        if model is not None:
            batch.append(tile.pixels)
            if len(batch) == FLAGS.encode_batch:
                codes += len(model.encode_images(batch, batch_size=FLAGS.encode_batch))
                batch = []
    if model is not None and batch:
        codes += len(model.encode_images(batch, batch_size=FLAGS.encode_batch))
    seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] if FLAGS.tracemalloc else None
    if FLAGS.tracemalloc:
        tracemalloc.stop()
    report = tiling.report
    whole, edge = expected_counts(scene.width, scene.height, FLAGS.tile, FLAGS.stride)
    result = {
        "scene": {"width": scene.width, "height": scene.height, "bands": FLAGS.bands, "file_mib": round(os.path.getsize(path) / 2**20, 1)},
        "tiler": {"tile": FLAGS.tile, "stride": FLAGS.stride, "radiometry": FLAGS.radiometry,
                  "gdal_cache_mb": FLAGS.gdal_cache_mb},
        "report": report.to_dict(),
        "whole_tiles_expected": whole, "edge_expected": edge,
        "seconds": round(seconds, 2),
        "tiles_per_second": round(report.tiles / seconds, 1),
        "grid_positions_per_second": round(whole / seconds, 1),
        "megapixels_per_second": round(whole * FLAGS.tile**2 / seconds / 1e6, 1),
        "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
        "peak_rss_before_tiling_mib": round(rss_before / 2**20, 1),
        "tracemalloc_peak_mib": None if traced_peak is None else round(traced_peak / 2**20, 1),
        "encoded": codes if model is not None else None,
    }
    what = "tiling + encoding" if model is not None else "tiling"
    log(f"{what}: {report}; expected {whole} whole tiles and {edge} partial edge positions")
    log(f"{what}: {seconds:.1f} s, {result['tiles_per_second']:,.1f} tiles/s yielded "
        f"({result['grid_positions_per_second']:,.1f} windows/s read, "
        f"{result['megapixels_per_second']:,.1f} Mpx/s of {len(FLAGS.bands)} bands)"
        + (f", {codes} tiles encoded" if model is not None else ""))
    log(f"{what}: peak RSS {result['peak_rss_mib']:,.0f} MiB (of which {result['peak_rss_before_tiling_mib']:,.0f} "
        f"MiB before tiling: interpreter, libraries{', model' if model is not None else ''}); "
        + (f"tracemalloc peak {result['tracemalloc_peak_mib']:,.1f} MiB" if traced_peak is not None else ""))
    return result


def main(argv):
    del argv
    if FLAGS.write_scene:
        write_scene(FLAGS.write_scene, FLAGS.size)
        return
    if FLAGS.scene:
        result = run_tiling(FLAGS.scene, FLAGS.encode_run)
        if FLAGS.out:
            with open(FLAGS.out, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
        return
    if FLAGS.workdir:
        os.makedirs(FLAGS.workdir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=FLAGS.workdir) as workdir:
        path = os.path.join(workdir, f"synthetic_{FLAGS.size}.tif")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.tiling_benchmark", f"--write_scene={path}",
                        f"--size={FLAGS.size}"], check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        log(f"scene made in {time.perf_counter() - started:.1f} s (child process)")
        result = run_tiling(path, FLAGS.encode_run)
    if FLAGS.out:
        with open(FLAGS.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
