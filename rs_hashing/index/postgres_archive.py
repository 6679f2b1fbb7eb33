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

Geography (optional, needs PostGIS). An archive opened with `geometry=True` has two
more columns, each with an index:

    footprint geometry(Geometry, 4326)  -- Polygon or MultiPolygon, lon/lat; GiST index
    acquired timestamptz                -- acquisition time; btree index

and a query may first keep the items whose footprint intersects a lon/lat box and whose
acquisition time lies in an inclusive range:

    WHERE footprint && ST_MakeEnvelope(x0, y0, x1, y1, 4326)
      AND ST_Intersects(footprint, ST_MakeEnvelope(x0, y0, x1, y1, 4326))
      AND acquired >= after AND acquired <= before
    ORDER BY hamming, id LIMIT k

Items without a footprint (or time) never pass a box (or time) filter. Footprints are
planar in lon/lat: a box does not wrap around the antimeridian (query both sides).
Footprints go in as hex EWKB in the COPY text and come back (`search_items`) as GeoJSON
dicts with exactly the coordinates given; times come back as ISO 8601 in UTC.
Geography is opt-in rather than switched on by the first footprint added, so that
`add` never changes the schema of a shared table; an archive opened on a table that
has the columns uses them without being asked.

Code bit i of the bit string is bit i of the code (packed codes are MSB first, as
`numpy.packbits(code > 0, axis=1)`), so bit strings read like the +-1 codes.

Needs psycopg 3 (`pip install "psycopg[binary]"`); it is imported when an archive is
opened, so the rest of the package works without it.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike

from rs_hashing.index.hamming_index import pack_codes

DEFAULT_TABLE = "rs_hashing_archive"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COPY_ROWS = 50_000  # rows per COPY block: bounds the Python strings built at once
_MIN_SERVER_VERSION = 140000  # bit_count(bit) arrived in PostgreSQL 14
# The geography columns and their types as format_type() names them.
_GEOGRAPHY_COLUMNS = {"footprint": "geometry(Geometry,4326)",
                      "acquired": "timestamp with time zone"}
_FOOTPRINT_TYPES = ("Polygon", "MultiPolygon")
_FOOTPRINT_TYPE_IDS = (3, 6)  # shapely.get_type_id of the two
_NULL = r"\N"  # NULL in COPY's text format


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _as_time(value: Any, name: str = "time") -> datetime:
    """An acquisition time as an aware UTC datetime.

    Args:
        value: an ISO 8601 string ('2021-05-03T10:42:00Z', '2021-05-03 12:42+02:00',
            '2021-05-03' for midnight), a datetime or a numpy datetime64. Times
            without a UTC offset are taken as UTC (never as the server's time zone).
        name: what to call the value in error messages.

    Raises:
        ValueError: anything else, naming the value.
    """
    given = value
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ValueError(f"{name}=NaT is not a time (None stands for no time)")
        value = value.astype("datetime64[us]").item()
    elif isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{name}={_short(given)} is not an ISO 8601 time "
                             "(e.g. '2021-05-03T10:42:00Z')") from None
    if not isinstance(value, datetime):
        raise ValueError(f"{name}={_short(given)} must be an ISO 8601 string, a datetime or "
                         "a numpy datetime64")
    if value.utcoffset() is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{name}={_short(given)} lies outside the years 1 to 9999 "
                         "in UTC") from None


def _to_geometry(value: Any, name: str) -> shapely.Geometry:
    """A shapely geometry from a GeoJSON dict, a `__geo_interface__` or itself."""
    if isinstance(value, shapely.Geometry):
        return value
    if isinstance(value, Mapping) or hasattr(value, "__geo_interface__"):
        try:
            return shapely.geometry.shape(value)
        except (KeyError, IndexError, TypeError, ValueError, shapely.errors.ShapelyError) as e:
            raise ValueError(f"{name}={_short(value)} is not a GeoJSON geometry ({e})") from None
    raise ValueError(f"{name}={_short(value)} must be a GeoJSON geometry dict or a "
                     "shapely geometry")


def _as_footprint(value: Any, name: str = "footprint") -> shapely.Geometry:
    """A footprint as a valid 2-D shapely Polygon or MultiPolygon in lon/lat.

    Args:
        value: a GeoJSON geometry dict (or any object with `__geo_interface__`) or a
            shapely geometry, in EPSG:4326 (x = longitude, y = latitude); a z
            coordinate is dropped.
        name: what to call the value in error messages.

    Raises:
        ValueError: another geometry type, an empty or invalid (self-intersecting, ...)
            polygon, or a coordinate that is not finite or lies outside lon [-180, 180],
            lat [-90, 90]; the message names the value.
    """
    geometry = _to_geometry(value, name)
    if geometry.geom_type not in _FOOTPRINT_TYPES or geometry.is_empty:
        raise ValueError(f"{name}={_short(value)} must be a non-empty Polygon or MultiPolygon, "
                         f"got {'an empty ' if geometry.is_empty else 'a '}{geometry.geom_type}")
    geometry = shapely.force_2d(geometry)
    coordinates = shapely.get_coordinates(geometry)
    if not np.all(np.isfinite(coordinates)):
        raise ValueError(f"{name}={_short(value)} has coordinates that are not finite")
    if np.any(np.abs(coordinates[:, 0]) > 180) or np.any(np.abs(coordinates[:, 1]) > 90):
        raise ValueError(f"{name}={_short(value)} leaves lon [-180, 180] / lat [-90, 90] "
                         "(footprints are EPSG:4326 lon/lat)")
    if not shapely.is_valid(geometry):
        raise ValueError(f"{name}={_short(value)} is not a valid polygon "
                         f"({shapely.is_valid_reason(geometry)})")
    return geometry


def _as_bbox(bbox: Any) -> tuple[float, float, float, float]:
    """(min_lon, min_lat, max_lon, max_lat) checked: four finite numbers, min <= max,
    lon in [-180, 180], lat in [-90, 90]; ValueError naming the bad value otherwise."""
    if isinstance(bbox, (str, bytes, Mapping)) or not isinstance(bbox, (Sequence, np.ndarray)):
        raise ValueError(f"bbox={_short(bbox)} must be (min_lon, min_lat, max_lon, max_lat)")
    values = list(bbox)
    if len(values) != 4:
        raise ValueError(f"bbox={_short(bbox)} must be 4 numbers (min_lon, min_lat, max_lon, "
                         f"max_lat), got {len(values)}")
    names = ("min_lon", "min_lat", "max_lon", "max_lat")
    for name, value in zip(names, values):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value):
            raise ValueError(f"bbox {name}={_short(value)} must be a finite number "
                             f"(bbox={_short(bbox)})")
    min_lon, min_lat, max_lon, max_lat = (float(value) for value in values)
    for name, value, limit in zip(names, (min_lon, min_lat, max_lon, max_lat), (180, 90, 180, 90)):
        if abs(value) > limit:
            raise ValueError(f"bbox {name}={value} lies outside [-{limit}, {limit}] (bbox is "
                             "EPSG:4326 lon/lat)")
    if min_lon > max_lon or min_lat > max_lat:
        raise ValueError(f"bbox={_short(bbox)} has min > max (min_lon <= max_lon and min_lat <= "
                         "max_lat; a box across the antimeridian is two queries)")
    return min_lon, min_lat, max_lon, max_lat


class PostgresArchive:
    """Binary codes with ids, metadata and optionally footprints and acquisition times
    in a PostgreSQL table (see the module docstring for the table and the query).

    Args:
        connection: a DSN (the archive opens and owns the connection) or an open
            psycopg 3 connection (left open by `close`).
        bits: code length K (a positive multiple of 8).
        table: table name (letters, digits and underscores).
        create: create the table when it does not exist (else it must exist), and
            with geometry=True add the geography columns it lacks.
        geometry: None: as the table is (geography when it has the columns; a new
            table has none). True: with geography; creates the PostGIS extension when
            the server has it but the database does not, and adds the columns and
            their indexes to a table without them (existing items get none). False:
            without; columns already there are left alone (added items get NULL).

    Raises:
        ValueError: a bad table name or bits, a missing table with create=False, a
            table whose codes have another length, a server older than 14, or
            geometry=True on a server without PostGIS or on a table without the
            geography columns with create=False.
    """

    def __init__(self, connection: Any, bits: int = 64, table: str = DEFAULT_TABLE,
                 create: bool = True, geometry: bool | None = None):
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 8 or bits % 8:
            raise ValueError(f"bits={bits!r} must be a positive multiple of 8")
        if not isinstance(table, str) or not _IDENTIFIER.match(table):
            raise ValueError(f"table={table!r} must be letters, digits and underscores "
                             "(starting with a letter or underscore, at most 63)")
        if geometry is not None and not isinstance(geometry, bool):
            raise ValueError(f"geometry={geometry!r} must be True, False or None")
        psycopg = _psycopg()
        self._sql = psycopg.sql
        self._owns_connection = isinstance(connection, str)
        self._connection = psycopg.connect(connection) if self._owns_connection else connection
        self._bits = bits
        self._table = table
        self._name = self._sql.Identifier(table)
        self._geography = False
        version = self._connection.info.server_version
        if version < _MIN_SERVER_VERSION:
            raise ValueError(f"PostgreSQL {version // 10000} has no bit_count(bit); the archive "
                             "needs PostgreSQL 14 or later")
        self._prepare_table(create, geometry)

    # ------------------------------------------------------------------ table

    def _prepare_table(self, create: bool, geometry: bool | None) -> None:
        stored = self._stored_code_type()
        if stored is None:
            if not create:
                raise ValueError(f"PostgreSQL table {self._table!r} does not exist "
                                 "(open the archive with create=True to make it)")
            if geometry:
                # Before the table, so that a server without PostGIS is left as it was.
                self._ensure_postgis()
            self._connection.execute(self._sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, code bit({}) NOT NULL, "
                "metadata jsonb)").format(self._name, self._sql.Literal(self._bits)))
            self._connection.commit()
            stored = self._stored_code_type()
        if stored != f"bit({self._bits})":
            raise ValueError(f"PostgreSQL table {self._table!r} holds codes of type {stored}, "
                             f"expected bit({self._bits}) ({self._bits}-bit codes)")
        try:
            has_geography = self._has_geography_columns()
        finally:
            self._connection.commit()  # ends the read, also after a refusal
        if geometry and not has_geography:
            if not create:
                raise ValueError(f"PostgreSQL table {self._table!r} has no geography columns "
                                 "(footprint, acquired); open the archive with create=True to "
                                 "add them")
            self._ensure_postgis()
            self._add_geography_columns()
            has_geography = True
        self._geography = has_geography and geometry is not False

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

    def _has_geography_columns(self) -> bool:
        """Whether the table has both geography columns (of the right types); runs in
        the caller's transaction."""
        stored = dict(self._connection.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attname = ANY(%s) AND NOT attisdropped",
            (self._table, list(_GEOGRAPHY_COLUMNS))).fetchall())
        if not stored:
            return False
        if stored != _GEOGRAPHY_COLUMNS:
            found = ", ".join(f"{column} {kind}" for column, kind in sorted(stored.items()))
            expected = ", ".join(f"{column} {kind}" for column, kind in _GEOGRAPHY_COLUMNS.items())
            raise ValueError(f"PostgreSQL table {self._table!r} has geography columns {found}; "
                             f"an archive table has {expected}")
        return True

    def _ensure_postgis(self) -> None:
        psycopg = _psycopg()
        query = "SELECT count(*) FROM pg_extension WHERE extname = 'postgis'"
        installed = self._connection.execute(query).fetchone()[0]
        self._connection.commit()
        if installed:
            return
        try:
            self._connection.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            self._connection.commit()
        except psycopg.Error as e:
            self._connection.rollback()
            # Another session may have created it at the same moment.
            installed = self._connection.execute(query).fetchone()[0]
            self._connection.commit()
            if not installed:
                raise ValueError(
                    "the archive's footprints need PostGIS, and CREATE EXTENSION postgis failed "
                    f"on this server ({str(e).strip()}); install PostGIS for the server "
                    "(Debian: postgresql-MAJOR-postgis-3) or ask its owner to create the "
                    "extension") from None

    def _add_geography_columns(self) -> None:
        # The lock (which conflicts with itself) makes archives opened at the same time
        # add the columns once; index names are left to PostgreSQL, so that long table
        # names sharing a prefix never collide.
        with self._connection.transaction():
            self._connection.execute(self._sql.SQL(
                "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(self._name))
            if self._has_geography_columns():
                return
            self._connection.execute(self._sql.SQL(
                "ALTER TABLE {} ADD COLUMN footprint geometry(Geometry, 4326) "
                "CHECK (ST_GeometryType(footprint) IN ('ST_Polygon', 'ST_MultiPolygon')), "
                "ADD COLUMN acquired timestamptz").format(self._name))
            self._connection.execute(self._sql.SQL(
                "CREATE INDEX ON {} USING gist (footprint)").format(self._name))
            self._connection.execute(self._sql.SQL(
                "CREATE INDEX ON {} (acquired)").format(self._name))

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def table(self) -> str:
        return self._table

    @property
    def geometry(self) -> bool:
        """Whether items have footprints and acquisition times (and searches filters)."""
        return self._geography

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

    def _no_geography_error(self, what: str) -> ValueError:
        return ValueError(f"PostgreSQL table {self._table!r} is opened without geography, so "
                          f"{what}; open the archive with geometry=True (which adds the "
                          "footprint and acquired columns to a table without them)")

    def add(self, codes: ArrayLike, ids: ArrayLike | None = None,
            metadata: Sequence[Mapping[str, Any] | None] | None = None,
            footprints: Sequence[Any] | None = None,
            times: Sequence[Any] | None = None) -> np.ndarray:
        """Inserts codes (one COPY, one transaction) and returns their ids.

        Args:
            codes: +-1 codes [N, K] or packed uint8 [N, K/8].
            ids: N distinct non-negative ids not yet in the table; None continues
                after the largest id stored (writers adding at the same time should
                give ids, else one of them fails on the primary key).
            metadata: N JSON-serialisable dicts (or None entries), or None.
            footprints: N footprints (or None entries), or None; each a valid
                Polygon or MultiPolygon as a GeoJSON dict or shapely geometry, in
                EPSG:4326 lon/lat within [-180, 180] x [-90, 90] (z is dropped). Needs
                an archive with geometry.
            times: N acquisition times (or None entries), or None; ISO 8601 strings
                ('2021-05-03T10:42:00Z'), datetimes or numpy datetime64, UTC when they
                carry no offset (never the server's time zone). Needs an archive with
                geometry.

        Raises:
            ValueError: bad shapes, repeated ids or ids already stored, a bad footprint
                or time (named by its position), or footprints/times on an archive
                without geometry (nothing is inserted then).
        """
        rows = bit_strings(codes, self._bits)
        if not self._geography and (footprints is not None or times is not None):
            raise self._no_geography_error("it cannot store footprints or times")
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
        columns = ["id", "code", "metadata"]
        geography: list[list[str]] = []
        if self._geography:
            columns += ["footprint", "acquired"]
            geography = [_footprint_text(footprints, len(rows)), _time_text(times, len(rows))]
        psycopg = _psycopg()
        copy_sql = self._sql.SQL("COPY {} ({}) FROM STDIN").format(
            self._name, self._sql.SQL(", ").join(map(self._sql.Identifier, columns)))
        try:
            with self._connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
                for start in range(0, len(rows), _COPY_ROWS):
                    stop = min(start + _COPY_ROWS, len(rows))
                    copy.write(self._copy_block(
                        ids[start:stop], rows[start:stop],
                        None if metadata is None else metadata[start:stop], start,
                        [column[start:stop] for column in geography]))
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
                    metadata: Sequence[Mapping[str, Any] | None] | None, offset: int,
                    more_columns: Sequence[Sequence[str]] = ()) -> bytes:
        """Rows in COPY's text format: tab-separated, \\N for NULL, backslashes doubled
        (json.dumps escapes tabs and newlines itself). `more_columns` are texts that
        need no escaping (hex WKB, ISO times)."""
        lines = []
        for i, (item_id, code) in enumerate(zip(ids.tolist(), rows)):
            value = _NULL
            if metadata is not None and metadata[i] is not None:
                item = metadata[i]
                if not isinstance(item, Mapping):
                    raise ValueError(f"metadata[{offset + i}] must be a dict, got {item!r}")
                try:
                    value = json.dumps(dict(item), ensure_ascii=False).replace("\\", "\\\\")
                except (TypeError, ValueError) as e:
                    raise ValueError(f"metadata[{offset + i}] is not JSON-serialisable ({e})") from None
            more = "".join(f"\t{column[i]}" for column in more_columns)
            lines.append(f"{item_id}\t{code}\t{value}{more}\n")
        return "".join(lines).encode("utf-8")

    # ------------------------------------------------------------------ searching

    def search(self, query_codes: ArrayLike, k: int = 10, bbox: Sequence[float] | None = None,
               after: Any = None, before: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored codes of each query among the items that pass the
        filters, ties by id (one SQL query each).

        Args:
            query_codes: +-1 codes [Q, K] or packed uint8 [Q, K/8].
            k: how many to return per query.
            bbox: (min_lon, min_lat, max_lon, max_lat) in EPSG:4326; keeps the items
                whose footprint intersects it (touching counts). None: no box filter.
            after, before: keep items acquired at or after / at or before this time
                (inclusive; an ISO string, datetime or datetime64, UTC without an
                offset). None: no bound.

        Returns:
            (ids int64 [Q, n], Hamming distances int32 [Q, n]), n = min(k, items
            that pass the filters).

        Raises:
            ValueError: a bad k, bbox or time (named), after later than before, or a
                filter on an archive without geometry.
        """
        results = self._search_rows(query_codes, k, bbox, after, before)
        top = min(len(rows) for rows in results) if results else 0
        ids = np.array([[r[0] for r in rows[:top]] for rows in results], dtype=np.int64)
        distances = np.array([[r[1] for r in rows[:top]] for rows in results], dtype=np.int32)
        return ids.reshape(len(results), top), distances.reshape(len(results), top)

    def search_items(self, query_codes: ArrayLike, k: int = 10,
                     bbox: Sequence[float] | None = None, after: Any = None,
                     before: Any = None) -> list[list[dict[str, Any]]]:
        """Like `search`, as one list per query of {"id", "hamming", **metadata}; with
        geometry also "footprint" (a GeoJSON dict) and "acquired" (ISO 8601 in UTC,
        e.g. '2021-05-03T10:42:00+00:00'), None where the item has none (these two
        take precedence over metadata keys of the same name)."""
        items = []
        for rows in self._search_rows(query_codes, k, bbox, after, before):
            found = []
            for row in rows:
                item = {"id": int(row[0]), "hamming": int(row[1]), **(row[2] or {})}
                if self._geography:
                    item["footprint"] = _geojson(row[3])
                    item["acquired"] = None if row[4] is None else \
                        row[4].astimezone(timezone.utc).isoformat()
                found.append(item)
            items.append(found)
        return items

    def _search_rows(self, query_codes: ArrayLike, k: int, bbox: Sequence[float] | None = None,
                     after: Any = None, before: Any = None) -> list[list[tuple]]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        sql = self._sql
        parameters: dict[str, Any] = {"k": int(k)}
        conditions = []  # constant SQL text only: every value given is a parameter
        if bbox is not None:
            parameters.update(zip(("min_lon", "min_lat", "max_lon", "max_lat"), _as_bbox(bbox)))
            # && picks candidates from the GiST index by bounding box, ST_Intersects
            # decides on the shapes.
            envelope = "ST_MakeEnvelope(%(min_lon)s, %(min_lat)s, %(max_lon)s, %(max_lat)s, 4326)"
            conditions.append(
                "footprint && " + envelope + " AND ST_Intersects(footprint, " + envelope + ")")
        if after is not None:
            parameters["after"] = _as_time(after, "after")
            conditions.append("acquired >= %(after)s")
        if before is not None:
            parameters["before"] = _as_time(before, "before")
            conditions.append("acquired <= %(before)s")
        if after is not None and before is not None and parameters["after"] > parameters["before"]:
            raise ValueError(f"after={_short(after)} is later than before={_short(before)}")
        if conditions and not self._geography:
            raise self._no_geography_error("it has no bbox or time filter")
        columns = sql.SQL("id, bit_count(code # %(code)s::bit({})) AS hamming, metadata").format(
            sql.Literal(self._bits))
        if self._geography:
            # WKB, not ST_AsGeoJSON: that prints at most 15 decimals, so footprints
            # would come back rounded.
            columns = sql.SQL("{}, ST_AsBinary(footprint) AS footprint, acquired").format(columns)
        where = sql.SQL("")
        if conditions:
            where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(map(sql.SQL, conditions))
        query = sql.SQL("SELECT {} FROM {}{} ORDER BY hamming, id LIMIT %(k)s").format(
            columns, self._name, where)
        results = []
        for code in bit_strings(query_codes, self._bits, "query_codes"):
            results.append(self._connection.execute(query, {**parameters, "code": code}).fetchall())
            self._connection.commit()
        return results


def _footprint_text(footprints: Sequence[Any] | None, count: int) -> list[str]:
    """Footprints as hex EWKB with SRID 4326 (PostGIS reads it as geometry text)."""
    if footprints is None:
        return [_NULL] * count
    if isinstance(footprints, (str, bytes, Mapping, shapely.Geometry)) or len(footprints) != count:
        raise ValueError(f"footprints must be a sequence of {count} geometries (one per code, "
                         "None for none)")
    geometries = np.empty(count, dtype=object)
    for i, footprint in enumerate(footprints):
        if footprint is not None:
            geometries[i] = _to_geometry(footprint, f"footprints[{i}]")
    # The checks of `_as_footprint`, on all footprints at once (about 10x faster); the
    # first one that fails is checked again alone for the message.
    geometries = shapely.force_2d(geometries)
    present = ~shapely.is_missing(geometries)
    bad = present & (~np.isin(shapely.get_type_id(geometries), _FOOTPRINT_TYPE_IDS)
                     | shapely.is_empty(geometries))
    coordinates, owners = shapely.get_coordinates(geometries, return_index=True)
    # Written so that NaN fails too.
    inside = (np.abs(coordinates[:, 0]) <= 180) & (np.abs(coordinates[:, 1]) <= 90)
    bad[owners[~inside]] = True
    bad |= present & ~bad & ~shapely.is_valid(geometries)
    if bad.any():
        first = int(np.argmax(bad))
        _as_footprint(footprints[first], f"footprints[{first}]")
        raise AssertionError(f"footprints[{first}] failed a check that it passes alone")
    wkb = shapely.to_wkb(shapely.set_srid(geometries, 4326), hex=True, output_dimension=2,
                         include_srid=True)
    return [_NULL if text is None else text for text in wkb.tolist()]


def _geojson(wkb: bytes | None) -> dict[str, Any] | None:
    """A stored footprint as a GeoJSON geometry dict, coordinates exactly as stored
    (json writes the shortest decimal that reads back as the same double)."""
    if wkb is None:
        return None
    return json.loads(json.dumps(shapely.geometry.mapping(shapely.from_wkb(bytes(wkb)))))


def _time_text(times: Sequence[Any] | None, count: int) -> list[str]:
    if times is None:
        return [_NULL] * count
    if isinstance(times, (str, bytes, Mapping)) or len(times) != count:
        raise ValueError(f"times must be a sequence of {count} times (one per code, None for "
                         "none)")
    return [_NULL if time is None else _as_time(time, f"times[{i}]").isoformat()
            for i, time in enumerate(times)]
