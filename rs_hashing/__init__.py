"""rs_hashing: unsupervised cross-modal hashing for remote-sensing image-text retrieval.

Re-implements DUCH (Mikriukov et al., ICASSP 2022) and CHNR (ICIP 2022) with Keras 3 on
TensorFlow. Importing the package does no I/O, defines no flags, seeds nothing and
imports nothing heavy: the public names below are loaded on first use (so that the
ground-station runtime, `rs_hashing.edge`, runs without TensorFlow).

The public surface:

    HashingModel    a trained run folder -> codes of sentences and images
    Codes           int8 +-1 codes and their packed bytes
    HammingIndex    faiss Hamming index (exact or IVF) with metadata, saved to one file
    PostgresArchive codes in a PostgreSQL bit(K) column (the shared archive)
    map_at_k        mAP@k (the authors' definition or the truncated one)
    load_config     the `Config` of a run folder (config.json)
    Config          the run configuration (data, features, model, train)

    from rs_hashing import HammingIndex, HashingModel
    model = HashingModel.from_run("runs/demo/run")
"""

import importlib

__version__ = "0.2.0"

_PUBLIC = {
    "HashingModel": "rs_hashing.hashing_model",
    "Codes": "rs_hashing.codes",
    "HammingIndex": "rs_hashing.index.hamming_index",
    "PostgresArchive": "rs_hashing.index.postgres_archive",
    "map_at_k": "rs_hashing.metrics",
    "load_config": "rs_hashing.config",
    "Config": "rs_hashing.config",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'rs_hashing' has no attribute {name!r}")


def __dir__():
    return __all__
