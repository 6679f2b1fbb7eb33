"""Retrieval evaluation of a trained model under the papers' protocol.

Queries are the query images and their protocol-chosen captions; the database holds the
database images and their chosen captions. Relevant means the same scene class. Codes are
the signs of the hash heads' outputs (0 maps to +1). With trainable encoder tops the
sets are the store's cached activations, which the model passes through its tuned tops.
"""

from __future__ import annotations

import numpy as np

from rs_hashing import metrics
from rs_hashing.codes import binarize
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.features.feature_store import FeatureStore

CODE_KEYS = ("query_image", "query_text", "database_image", "database_text")


def _rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a store array; float16 activations stay float16 (the model casts them)."""
    return np.asarray(array[rows], np.float16 if array.dtype == np.float16 else np.float32)


def retrieval_features(store: FeatureStore, split: ProtocolSplit) -> dict[str, np.ndarray]:
    """Features (or cached activations) of the query and database sets and their
    labels; `<set>_text_mask` too when the store holds token states."""
    offsets = np.asarray(store.caption_offsets)
    out = {}
    for part, images in (("query", split.query), ("database", split.database)):
        captions = split.chosen_caption_index(offsets, images)
        out[f"{part}_image"] = _rows(store.image, images)
        out[f"{part}_text"] = _rows(store.text, captions)
        if store.text_mask is not None:
            out[f"{part}_text_mask"] = np.asarray(store.text_mask[captions])
        out[f"{part}_labels"] = np.asarray(store.labels[images])
    return out


def encode_continuous(model, features: dict[str, np.ndarray], batch_size: int = 1024) -> dict[str, np.ndarray]:
    """The heads' continuous outputs (before the sign) of every retrieval set."""
    outputs = {}
    for key in CODE_KEYS:
        rows = range(0, len(features[key]), batch_size)
        if key.endswith("image"):
            parts = [model.encode_image(features[key][i:i + batch_size], training=False) for i in rows]
        else:
            masks = features.get(f"{key}_mask")
            parts = [model.encode_text(features[key][i:i + batch_size], training=False,
                                       padding_mask=None if masks is None else masks[i:i + batch_size])
                     for i in rows]
        outputs[key] = np.concatenate([np.asarray(part) for part in parts])
    return outputs


def encode_sets(model, features: dict[str, np.ndarray], batch_size: int = 1024,
                continuous: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Binary codes of every retrieval set, plus their labels."""
    continuous = continuous if continuous is not None else encode_continuous(model, features, batch_size)
    codes = {key: binarize(continuous[key]) for key in CODE_KEYS}
    codes["query_labels"] = features["query_labels"]
    codes["database_labels"] = features["database_labels"]
    return codes


def continuous_map(continuous: dict[str, np.ndarray], labels: dict[str, np.ndarray], k: int = 20) -> dict:
    """mAP@k (authors' definition) of every task ranked by the cosine of the continuous
    outputs: what the codes would reach without binarisation."""
    relevant = metrics.relevance_from_labels(labels["query"], labels["database"])
    return {task: metrics.map_at_k_by_similarity(continuous[f"query_{query}"], continuous[f"database_{database}"],
                                                 relevant, k=k)
            for task, (query, database) in metrics.TASKS.items()}


def evaluate_codes(codes: dict[str, np.ndarray], k: int = 20) -> tuple[dict, dict]:
    """(metrics.json content, PR curves per task) for a set of binary codes."""
    labels = {"query": codes["query_labels"], "database": codes["database_labels"]}
    results = metrics.evaluate_retrieval({k_: codes[k_] for k_ in CODE_KEYS}, labels, k=k)
    relevant = metrics.relevance_from_labels(labels["query"], labels["database"])
    curves = {}
    for task, (query, database) in metrics.TASKS.items():
        curve = metrics.pr_curve_by_radius(codes[f"query_{query}"], codes[f"database_{database}"], relevant)
        curves[task] = {name: np.asarray(v).tolist() for name, v in curve.items()}
    return results, curves


def evaluate_model(model, store: FeatureStore, split: ProtocolSplit, k: int = 20):
    """Encodes the query and database sets and scores all four tasks: mAP@k of the codes
    (authors' and truncated), of the continuous outputs (`map@k_continuous`, the
    binarisation gap's other end), precision@k, PR curves; `evaluated_on` says whether
    the sets were the test queries and database or a validation split's."""
    features = retrieval_features(store, split)
    continuous = encode_continuous(model, features)
    codes = encode_sets(model, features, continuous=continuous)
    results, curves = evaluate_codes(codes, k=k)
    results[f"map@{k}_continuous"] = continuous_map(
        continuous, {"query": features["query_labels"], "database": features["database_labels"]}, k=k)
    results["evaluated_on"] = split.evaluated_on
    results["sizes"] = split.sizes()
    return results, curves, codes


def format_table(results: dict, k: int = 20) -> str:
    """The four tasks' mAP@k (authors' and truncated) as a markdown table."""
    lines = [f"| metric | {' | '.join(metrics.TASKS)} |", "|---|" + "---|" * len(metrics.TASKS)]
    for key, name in ((f"map@{k}", f"mAP@{k} (authors')"), (f"map@{k}_truncated", f"mAP@{k} (truncated)")):
        lines.append(f"| {name} | " + " | ".join(f"{results[key][t]:.3f}" for t in metrics.TASKS) + " |")
    return "\n".join(lines)
