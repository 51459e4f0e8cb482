"""The vector index of a SQLite store: sqlite-vec in a sidecar database, fed from `cache_vectors`.

Binding: Python's own `sqlite3` may be built without extension loading (this project's pyenv 3.11
is), so the sidecar is opened with apsw. apsw ships wheels for every platform with its own current
SQLite, allows `load_extension`, is typed (a `.pyi` in the wheel) and is maintained release for
release with SQLite; sqlean-py and pysqlite3-binary are sqlite3 clones without types, and
pysqlite3-binary has Linux wheels only.

Sidecar, not the store's file: aiosqlite's SQLite and apsw's are two copies of the library in one
process, and two copies opening one file break POSIX locking (sqlite.org/howtocorrupt.html
§2.2.1). The index lives beside the store as `<store file>.vectors` (`sidecar_path`); an in-memory
store gets an in-memory sidecar.

    feed                 one row: the last `cache_vectors` row copied in (id, job), the layout
    vectors_<dims>       a vec0 table per vector size: tenant (partition key), embedding
                         (cosine), grp, embedder, created (metadata, filtered in the KNN scan),
                         job_id (auxiliary); rowid = cache_vectors.id

Before each search the rows of `cache_vectors` with id > the last one copied are copied in, in one
IMMEDIATE transaction that re-reads `feed` (so processes sharing a store file share the sidecar
without copying a row twice). SQLite assigns ids in commit order (one writer at a time), so
"id > last" misses nothing. A deleted sidecar, one of another layout, or one made from another
store (its last row is not the store's row of that id: the store file was made anew) is rebuilt
from SQL. Rows are never deleted from `cache_vectors`; the cache's TTL and a tenant's clear are the
`since` of a search.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast

import apsw
import sqlite_vec
from sqlalchemy import select, true

from storage.sql.database import Database
from storage.sql.schema import cache_vectors
from storage.sql.vectors.model import (
    PAGE,
    Neighbour,
    SerialThread,
    VectorEntry,
    VectorRow,
    insert_vector,
    micros,
    query_bytes,
    read_rows,
)

__all__ = ["SIDECAR_SUFFIX", "SqliteVecIndex", "sidecar_path"]

logger = logging.getLogger("routeq.storage")

SIDECAR_SUFFIX = ".vectors"
_LAYOUT = 1  # bump when the sidecar's tables change: an older sidecar is then rebuilt
_MAX_K = 4096  # vec0's limit on k
_IN_MEMORY = ":memory:"


def sidecar_path(database: str | None) -> str:
    """The sidecar of a SQLite store: `<store file>.vectors`, or in memory for an in-memory store.

    `database` is the store URL's database part (`sqlite+aiosqlite:///data/routeq.db` →
    `data/routeq.db.vectors`; a `file:` URI's path gets the suffix before its query).
    """
    if not database or database == _IN_MEMORY or "mode=memory" in database:
        return _IN_MEMORY
    path = database.removeprefix("file:").partition("?")[0]
    return path + SIDECAR_SUFFIX


@dataclass(frozen=True)
class _Query:
    tenant: str
    grp: str
    embedder: str
    vector: bytes
    dims: int
    k: int
    since: int  # microseconds since the epoch


class _Sidecar:
    """The sidecar connection; every method runs on the index's one thread."""

    def __init__(self, path: str) -> None:
        if path != _IN_MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = apsw.Connection(path)
        self.conn.enable_load_extension(True)
        self.conn.load_extension(sqlite_vec.loadable_path())
        self.conn.enable_load_extension(False)
        self.conn.set_busy_timeout(30_000)  # another process copying rows in: wait, don't fail
        self.conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS feed (one INTEGER PRIMARY KEY CHECK (one = 0), "
            "last_id INTEGER NOT NULL, last_job TEXT NOT NULL, layout INTEGER NOT NULL)"
        )
        self.conn.execute("INSERT OR IGNORE INTO feed VALUES (0, 0, '', ?)", (_LAYOUT,))

    def feed(self) -> tuple[int, str, int]:
        """The last row copied in (`cache_vectors` id and job) and the layout it was copied into."""
        row = self.conn.execute("SELECT last_id, last_job, layout FROM feed").fetchone()
        assert row is not None  # inserted when the sidecar was opened
        return int(cast(int, row[0])), str(row[1]), int(cast(int, row[2]))

    def reset(self) -> None:
        """Empty the sidecar (its rows are copied in again from SQL)."""
        with self._immediate():
            for (name,) in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'"
            ).fetchall():
                self.conn.execute(f'DROP TABLE "{name}"')
            self.conn.execute("UPDATE feed SET last_id = 0, last_job = '', layout = ?", (_LAYOUT,))

    def copy(self, rows: Sequence[VectorRow]) -> int:
        """Insert the rows not copied yet (another process may have); returns the new last id."""
        with self._immediate():
            last, last_job, _ = self.feed()
            for row in rows:
                if row.id <= last:
                    continue
                table = self._table(row.dims)
                self.conn.execute(
                    f"INSERT INTO {table} (rowid, tenant, embedding, grp, embedder, created, job_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row.id, row.tenant, row.vector, row.grp, row.embedder, row.created, row.job_id),
                )
                last, last_job = row.id, row.job_id
            self.conn.execute("UPDATE feed SET last_id = ?, last_job = ?", (last, last_job))
            return last

    def _table(self, dims: int) -> str:
        table = f"vectors_{int(dims)}"
        self.conn.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING vec0("
            f"tenant text partition key, embedding float[{int(dims)}] distance_metric=cosine, "
            "grp text, embedder text, created integer, +job_id text)"
        )
        return table

    def search(self, q: _Query) -> list[Neighbour]:
        table = f"vectors_{int(q.dims)}"
        exists = self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        if exists is None:
            return []
        rows = self.conn.execute(
            f"SELECT job_id, distance FROM {table} WHERE embedding MATCH ? AND k = ? AND tenant = ? "
            "AND grp = ? AND embedder = ? AND created >= ? ORDER BY distance",
            (q.vector, min(q.k, _MAX_K), q.tenant, q.grp, q.embedder, q.since),
        ).fetchall()
        return [Neighbour(str(job_id), 1.0 - float(cast(float, distance))) for job_id, distance in rows]

    def _immediate(self) -> _Immediate:
        return _Immediate(self.conn)

    def close(self) -> None:
        self.conn.close()


class _Immediate:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK): take the sidecar's write lock before reading `feed`."""

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


class SqliteVecIndex:
    """sqlite-vec over a sidecar database, fed from the store's `cache_vectors`."""

    name = "sqlite-vec"

    def __init__(self, db: Database, thread: SerialThread, sidecar: _Sidecar, path: str) -> None:
        self._db = db
        self._thread = thread
        self._sidecar = sidecar
        self.path = path
        self._last = 0  # a hint: the sidecar's `feed` row is the truth (other processes move it)

    @classmethod
    async def open(cls, db: Database, database: str | None) -> SqliteVecIndex:
        """Open (or create) the sidecar of the store whose URL's database part is `database`."""
        path = sidecar_path(database)
        thread = SerialThread("routeq-vectors")
        try:
            sidecar = await thread.run(_Sidecar, path)
        except BaseException:
            thread.close()
            raise
        index = cls(db, thread, sidecar, path)
        last, last_job, layout = await thread.run(sidecar.feed)
        # The store's row with the last id copied must be the same job, or this sidecar was made
        # from another store (a store file deleted and made anew beside its old sidecar).
        async with db.reading() as conn:
            query = select(cache_vectors.c.job_id).where(cache_vectors.c.id == last)
            same_store = last == 0 or (await conn.execute(query)).scalar() == last_job
        if layout != _LAYOUT or not same_store:
            logger.info("vector sidecar %s does not match its store: rebuilding it from SQL", path)
            await thread.run(sidecar.reset)
            last = 0
        index._last = last
        return index

    async def add(self, entry: VectorEntry) -> None:
        """Insert the `cache_vectors` row; the next search copies it into the sidecar."""
        await insert_vector(self._db, entry)

    async def catch_up(self) -> None:
        """Copy the rows of `cache_vectors` the sidecar has not seen yet."""
        while True:
            async with self._db.reading() as conn:
                rows = await read_rows(conn, true(), self._last)
            if rows:
                self._last = await self._thread.run(self._sidecar.copy, rows)
            if len(rows) < PAGE:
                return

    async def nearest(
        self,
        tenant: str,
        grp: str,
        embedder: str,
        vector: Sequence[float],
        *,
        k: int = 4,
        since: datetime | None = None,
    ) -> list[Neighbour]:
        """The `k` most similar rows of that tenant, group and embedder, best first."""
        after = micros(since) if since is not None else -(2**62)
        query = _Query(tenant, grp, embedder, query_bytes(vector, k), len(vector), k, after)
        await self.catch_up()
        return await self._thread.run(self._sidecar.search, query)

    async def close(self) -> None:
        await self._thread.run(self._sidecar.close)
        self._thread.close()
