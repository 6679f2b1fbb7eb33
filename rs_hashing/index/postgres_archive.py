"""A shared archive of binary codes in PostgreSQL, searched exactly in SQL.

Earth-observation catalogues already run on PostgreSQL; this keeps the hash codes of
an archive next to them, so that several users and services search one archive. Each
item is a row of

    id bigint PRIMARY KEY, code bit(K) NOT NULL, metadata jsonb

and a top-k query is

    SELECT id, bit_count(code # query) AS hamming, metadata FROM archive
    ORDER BY hamming, id LIMIT k

(`#` is XOR on bit strings; `bit_count` needs PostgreSQL 14 or later). Ties are broken
by id, so results equal those of the exact `HammingIndex` on the same codes and ids.
The query is a full scan (PostgreSQL parallelises it); at a million codes it is much
slower than the in-memory faiss index, and the benchmark says by how much.

Code bit i of the bit string is bit i of the code (packed codes are MSB first, as
`numpy.packbits(code > 0, axis=1)`), so bit strings read like the +-1 codes.

Needs psycopg 3 (`pip install "psycopg[binary]"`); it is imported when an archive is
opened, so the rest of the package works without it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from rs_hashing.index.hamming_index import pack_codes

DEFAULT_TABLE = "rs_hashing_archive"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COPY_ROWS = 50_000  # rows per COPY block: bounds the Python strings built at once
_MIN_SERVER_VERSION = 140000  # bit_count(bit) arrived in PostgreSQL 14


def _psycopg():
    try:
        import psycopg  # pylint: disable=import-outside-toplevel
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            'the PostgreSQL archive needs psycopg 3: pip install "psycopg[binary]"') from None
    return psycopg


def bit_strings(codes: ArrayLike, bits: int, name: str = "codes") -> list[str]:
    """Codes as PostgreSQL bit-string text ('0110...'), one per row."""
    unpacked = np.unpackbits(pack_codes(codes, bits, name), axis=1)
    characters = (unpacked + ord("0")).astype(np.uint8)
    return [row.tobytes().decode("ascii") for row in characters]


class PostgresArchive:
    """Binary codes with ids and metadata in a PostgreSQL table (see the module
    docstring for the table and the query).

    Args:
        connection: a DSN (the archive opens and owns the connection) or an open
            psycopg 3 connection (left open by `close`).
        bits: code length K (a positive multiple of 8).
        table: table name (letters, digits and underscores).
        create: create the table when it does not exist (else it must exist).

    Raises:
        ValueError: a bad table name or bits, a missing table with create=False, a
            table whose codes have another length, or a server older than 14.
    """

    def __init__(self, connection: Any, bits: int = 64, table: str = DEFAULT_TABLE,
                 create: bool = True):
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 8 or bits % 8:
            raise ValueError(f"bits={bits!r} must be a positive multiple of 8")
        if not isinstance(table, str) or not _IDENTIFIER.match(table):
            raise ValueError(f"table={table!r} must be letters, digits and underscores "
                             "(starting with a letter or underscore, at most 63)")
        psycopg = _psycopg()
        self._sql = psycopg.sql
        self._owns_connection = isinstance(connection, str)
        self._connection = psycopg.connect(connection) if self._owns_connection else connection
        self._bits = bits
        self._table = table
        self._name = self._sql.Identifier(table)
        version = self._connection.info.server_version
        if version < _MIN_SERVER_VERSION:
            raise ValueError(f"PostgreSQL {version // 10000} has no bit_count(bit); the archive "
                             "needs PostgreSQL 14 or later")
        self._prepare_table(create)

    # ------------------------------------------------------------------ table

    def _prepare_table(self, create: bool) -> None:
        stored = self._stored_code_type()
        if stored is None:
            if not create:
                raise ValueError(f"PostgreSQL table {self._table!r} does not exist "
                                 "(open the archive with create=True to make it)")
            self._connection.execute(self._sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, code bit({}) NOT NULL, "
                "metadata jsonb)").format(self._name, self._sql.Literal(self._bits)))
            self._connection.commit()
            stored = self._stored_code_type()
        if stored != f"bit({self._bits})":
            raise ValueError(f"PostgreSQL table {self._table!r} holds codes of type {stored}, "
                             f"expected bit({self._bits}) ({self._bits}-bit codes)")

    def _stored_code_type(self) -> str | None:
        row = self._connection.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attname = 'code' AND NOT attisdropped",
            (self._table,)).fetchone()
        self._connection.commit()
        if row is None:
            exists = self._connection.execute("SELECT to_regclass(%s) IS NOT NULL",
                                              (self._table,)).fetchone()[0]
            self._connection.commit()
            if exists:
                raise ValueError(f"PostgreSQL table {self._table!r} exists but has no 'code' "
                                 "column; it is not an archive table")
            return None
        return row[0]

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def table(self) -> str:
        return self._table

    def count(self) -> int:
        count = self._connection.execute(
            self._sql.SQL("SELECT count(*) FROM {}").format(self._name)).fetchone()[0]
        self._connection.commit()
        return int(count)

    def drop(self) -> None:
        """Deletes the table and everything in it."""
        self._connection.execute(self._sql.SQL("DROP TABLE IF EXISTS {}").format(self._name))
        self._connection.commit()

    def close(self) -> None:
        if self._owns_connection:
            self._connection.close()

    def __enter__(self) -> "PostgresArchive":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ adding

    def add(self, codes: ArrayLike, ids: ArrayLike | None = None,
            metadata: Sequence[Mapping[str, Any] | None] | None = None) -> np.ndarray:
        """Inserts codes (one COPY, one transaction) and returns their ids.

        Args:
            codes: +-1 codes [N, K] or packed uint8 [N, K/8].
            ids: N distinct non-negative ids not yet in the table; None continues
                after the largest id stored (writers adding at the same time should
                give ids, else one of them fails on the primary key).
            metadata: N JSON-serialisable dicts (or None entries), or None.

        Raises:
            ValueError: bad shapes, repeated ids or ids already stored (nothing is
                inserted then).
        """
        rows = bit_strings(codes, self._bits)
        if ids is None:
            start = self._connection.execute(self._sql.SQL(
                "SELECT coalesce(max(id), -1) + 1 FROM {}").format(self._name)).fetchone()[0]
            self._connection.commit()
            ids = np.arange(start, start + len(rows), dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (len(rows),) or (len(rows) and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids must be {len(rows)} integers (one per code), got shape "
                             f"{ids.shape} dtype {ids.dtype}")
        if len(rows) and ids.min() < 0:
            raise ValueError(f"ids must be >= 0, got {ids.min()}")
        if metadata is not None and (isinstance(metadata, (str, Mapping)) or len(metadata) != len(rows)):
            raise ValueError(f"metadata must be a sequence of {len(rows)} dicts (one per code)")
        psycopg = _psycopg()
        copy_sql = self._sql.SQL("COPY {} (id, code, metadata) FROM STDIN").format(self._name)
        try:
            with self._connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
                for start in range(0, len(rows), _COPY_ROWS):
                    stop = min(start + _COPY_ROWS, len(rows))
                    copy.write(self._copy_block(ids[start:stop], rows[start:stop],
                                                None if metadata is None else metadata[start:stop],
                                                start))
            self._connection.commit()
        except psycopg.errors.UniqueViolation as e:
            self._connection.rollback()
            raise ValueError(f"PostgreSQL table {self._table!r}: an id is already stored or "
                             f"repeats ({e.diag.message_detail}); nothing was added") from None
        except BaseException:
            self._connection.rollback()
            raise
        return ids.astype(np.int64)

    @staticmethod
    def _copy_block(ids: np.ndarray, rows: list[str],
                    metadata: Sequence[Mapping[str, Any] | None] | None, offset: int) -> bytes:
        """Rows in COPY's text format: tab-separated, \\N for NULL, backslashes doubled
        (json.dumps escapes tabs and newlines itself)."""
        lines = []
        for i, (item_id, code) in enumerate(zip(ids.tolist(), rows)):
            value = r"\N"
            if metadata is not None and metadata[i] is not None:
                item = metadata[i]
                if not isinstance(item, Mapping):
                    raise ValueError(f"metadata[{offset + i}] must be a dict, got {item!r}")
                try:
                    value = json.dumps(dict(item), ensure_ascii=False).replace("\\", "\\\\")
                except (TypeError, ValueError) as e:
                    raise ValueError(f"metadata[{offset + i}] is not JSON-serialisable ({e})") from None
            lines.append(f"{item_id}\t{code}\t{value}\n")
        return "".join(lines).encode("utf-8")

    # ------------------------------------------------------------------ searching

    def _query(self, code: str, k: int) -> list[tuple[int, int, Any]]:
        query = self._sql.SQL(
            "SELECT id, bit_count(code # %s::bit({bits})) AS hamming, metadata FROM {table} "
            "ORDER BY hamming, id LIMIT %s").format(bits=self._sql.Literal(self._bits),
                                                    table=self._name)
        rows = self._connection.execute(query, (code, k)).fetchall()
        self._connection.commit()
        return rows

    def search(self, query_codes: ArrayLike, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored codes of each query, ties by id (one SQL query each).

        Returns:
            (ids int64 [Q, min(k, count)], Hamming distances int32 [Q, min(k, count)]).
        """
        results = self._search_rows(query_codes, k)
        top = min(len(rows) for rows in results) if results else 0
        ids = np.array([[r[0] for r in rows[:top]] for rows in results], dtype=np.int64)
        distances = np.array([[r[1] for r in rows[:top]] for rows in results], dtype=np.int32)
        return ids.reshape(len(results), top), distances.reshape(len(results), top)

    def search_items(self, query_codes: ArrayLike, k: int = 10) -> list[list[dict[str, Any]]]:
        """Like `search`, as one list per query of {"id", "hamming", **metadata}."""
        return [[{"id": int(i), "hamming": int(d), **(m or {})} for i, d, m in rows]
                for rows in self._search_rows(query_codes, k)]

    def _search_rows(self, query_codes: ArrayLike, k: int) -> list[list[tuple[int, int, Any]]]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        return [self._query(code, int(k))
                for code in bit_strings(query_codes, self._bits, "query_codes")]
