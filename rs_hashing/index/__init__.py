"""Archive search: a faiss Hamming index, a PostgreSQL archive, archive indexing.

`HammingIndex` and `PostgresArchive` are loaded on first use (faiss and psycopg are
imported only by what needs them).
"""

import importlib

_PUBLIC = {
    "HammingIndex": "rs_hashing.index.hamming_index",
    "PostgresArchive": "rs_hashing.index.postgres_archive",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'rs_hashing.index' has no attribute {name!r}")
