"""The main job end to end: data, features, training, evaluation, search.

This is what `make demo` runs on the embedded default data (real Sentinel-2 pixels,
rule-derived labels, generated captions); with another preset it runs the same steps on
a user's archive.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from rs_hashing import config as config_lib
from rs_hashing.data.loaders import load_dataset
from rs_hashing.features.extraction import build_text_encoder, extract_features
from rs_hashing.index.hamming_index import HammingIndex
from rs_hashing.training import evaluation, trainer


def search_by_text(queries: list[str], config: config_lib.Config, model, store, dataset,
                   top_k: int = 5) -> list[dict]:
    """Top-k archive images (all images of the dataset) for each typed caption."""
    text_encoder = build_text_encoder(config.features)
    query_codes = evaluation.binarize(model.encode_text(text_encoder.encode(queries), training=False))
    archive_codes = evaluation.binarize(model.encode_image(np.asarray(store.image), training=False))
    # Exact index, ids = archive positions: the same ranking as metrics.rank_database
    # (ties by position), through the search path that train.search uses.
    index = HammingIndex(archive_codes.shape[1], kind="flat")
    index.add(archive_codes)
    ids, distances = index.search(query_codes, top_k)
    return [{"query": q, "results": [
        {"image": dataset.filenames[j], "class": dataset.class_names[dataset.labels[j]],
         "hamming": int(d)} for j, d in zip(ids[i], distances[i])]} for i, q in enumerate(queries)]


def export_run(run_dir: str, export_dir: str, sample_images: list[str]) -> dict:
    """SavedModel (TF Serving) and fp32 TFLite image encoder of a run, with the TFLite
    bit agreement measured on `sample_images`; a run whose encoders were random and never
    saved (the smoke preset's tiny ones) cannot be exported and says so."""
    # Imported here: export pulls TF Serving protos and the TFLite converter, which the
    # rest of the main job does not need.
    from rs_hashing.export.hashing_encoders import HashingEncoders  # pylint: disable=import-outside-toplevel
    from rs_hashing.export.image_sample import ImageSample  # pylint: disable=import-outside-toplevel
    from rs_hashing.export.serving_export import export_savedmodel  # pylint: disable=import-outside-toplevel
    from rs_hashing.export.tflite_export import export_tflite  # pylint: disable=import-outside-toplevel

    try:
        encoders = HashingEncoders.from_workdir(run_dir)
    except ValueError as e:
        return {"skipped": str(e)}
    savedmodel = export_savedmodel(encoders, os.path.join(export_dir, "savedmodel"))
    report = export_tflite(encoders, os.path.join(export_dir, "image_encoder_fp32.tflite"), "fp32",
                           sample=ImageSample.from_files(sample_images), text=False)
    return {"savedmodel": savedmodel, "tflite": os.path.join(export_dir, "image_encoder_fp32.tflite"),
            "tflite_report": report}


def run_main_job(config: config_lib.Config, workdir: str, queries: list[str], verbose: int = 2) -> dict:
    """Extracts features (or reuses them), trains, evaluates and searches; returns a summary."""
    timings = {}
    started = time.perf_counter()
    dataset = load_dataset(config.data)
    print(dataset.summary(), flush=True)
    timings["data_s"] = time.perf_counter() - started

    t = time.perf_counter()
    features_dir = config.features.features or os.path.join(workdir, "features")
    store, _ = extract_features(config, dataset, features_dir)
    timings["features_s"] = time.perf_counter() - t
    config = config_lib.apply_overrides(config, {"features": features_dir, "workdir": os.path.join(workdir, "run")})

    t = time.perf_counter()
    results = trainer.train(config, verbose=verbose)
    timings["train_and_evaluate_s"] = time.perf_counter() - t
    model = trainer.load_trained_model(config.train.workdir)

    t = time.perf_counter()
    found = search_by_text(queries, config, model, store, dataset)
    timings["search_s"] = time.perf_counter() - t

    t = time.perf_counter()
    exports = export_run(config.train.workdir, os.path.join(workdir, "export"),
                         [dataset.image_path(i) for i in range(min(64, len(dataset)))])
    timings["export_s"] = time.perf_counter() - t
    timings = {k: round(v, 1) for k, v in timings.items()}
    summary = {"dataset": dataset.summary(), "metrics": results, "search": found, "exports": exports,
               "timings": timings, "config": dataclasses.asdict(config)}
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
    return summary
