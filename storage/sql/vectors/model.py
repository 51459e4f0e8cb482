"""What every vector index shares: entries and neighbours, the `VectorIndex` protocol, and the
`cache_vectors` rows (the source of truth every index is fed from).

A vector travels as float32 little-endian bytes (`pack` / `unpack`); `created_at` becomes integer
microseconds since the epoch where an index keeps it outside SQL (`micros`).
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.sql.database import Database
from storage.sql.schema import cache_vectors

__all__ = [
    "PAGE",
    "AfterInsert",
    "Neighbour",
    "SerialThread",
    "VectorEntry",
    "VectorIndex",
    "VectorRow",
    "in_group",
    "insert_vector",
    "micros",
    "pack",
    "query_bytes",
    "read_rows",
    "unpack",
]

T = TypeVar("T")
AfterInsert = Callable[[AsyncConnection, int], Awaitable[None]]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Rows are copied out of SQL in pages of this many, so a rebuild never holds the whole table.
PAGE = 2000


@dataclass(frozen=True)
class VectorEntry:
    """One cached job's embedding: `grp` says which requests it may be compared with."""

    job_id: str
    tenant: str
    grp: str
    embedder: str
    vector: Sequence[float]


@dataclass(frozen=True)
class Neighbour:
    """A job whose embedding is near the query; `similarity` is the cosine similarity in [-1, 1]."""

    job_id: str
    similarity: float


@dataclass(frozen=True)
class VectorRow:
    """A `cache_vectors` row as the indexes copy it."""

    id: int
    job_id: str
    tenant: str
    grp: str
    embedder: str
    dims: int
    vector: bytes
    created: int  # microseconds since the epoch


class VectorIndex(Protocol):
    """The semantic cache's nearest-neighbour search over `cache_vectors`."""

    name: str

    async def add(self, entry: VectorEntry) -> None:
        """Insert the entry's `cache_vectors` row (a second add of a job changes nothing)."""

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
        """The `k` rows of that tenant, group and embedder most similar to `vector`, best first,
        created at or after `since`."""
        ...

    async def close(self) -> None:
        """Release what the index holds (threads, files, memory)."""


def pack(vector: Sequence[float]) -> bytes:
    """float32 little-endian bytes of a non-empty, finite, non-zero vector (cosine needs a norm).

    Raises:
        ValueError: the vector cannot be compared by cosine.
    """
    if not vector:
        raise ValueError("an embedding needs at least one dimension")
    if not all(math.isfinite(x) for x in vector) or not any(vector):
        raise ValueError("an embedding must be finite and not all zeros (cosine similarity needs a norm)")
    return struct.pack(f"<{len(vector)}f", *vector)


def query_bytes(vector: Sequence[float], k: int) -> bytes:
    """`pack(vector)` for a search of `k` neighbours.

    Raises:
        ValueError: the vector cannot be compared by cosine, or `k` is below 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    return pack(vector)


def unpack(blob: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(blob) // 4}f", blob)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC (how SQLite returns them)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


async def insert_vector(db: Database, entry: VectorEntry, then: AfterInsert | None = None) -> int | None:
    """Insert the entry's `cache_vectors` row through the group committer; its id, or None when the
    job already had one (ON CONFLICT DO NOTHING: the job's first vector stays). `then(conn, id)`
    runs in the same transaction after a row was inserted (pgvector's embedding row).

    Raises:
        ValueError: the vector cannot be compared by cosine (see `pack`).
    """
    values = {
        "job_id": entry.job_id,
        "tenant": entry.tenant,
        "grp": entry.grp,
        "embedder": entry.embedder,
        "dims": len(entry.vector),
        "vector": pack(entry.vector),
        "created_at": db.now(),
    }
    statement = db.insert_ignoring_duplicates(cache_vectors).values(values).returning(cache_vectors.c.id)

    async def write(conn: AsyncConnection) -> int | None:
        row_id: int | None = (await conn.execute(statement)).scalar()
        if row_id is not None and then is not None:
            await then(conn, row_id)
        return row_id

    return await db.writes.run(write)


def in_group(tenant: str, grp: str, embedder: str, dims: int) -> ColumnElement[bool]:
    """Rows comparable with a query: same tenant, request group, embedder and dimensions."""
    c = cache_vectors.c
    return (c.tenant == tenant) & (c.grp == grp) & (c.embedder == embedder) & (c.dims == dims)


def _row(mapping: Any) -> VectorRow:
    return VectorRow(
        id=mapping.id,
        job_id=mapping.job_id,
        tenant=mapping.tenant,
        grp=mapping.grp,
        embedder=mapping.embedder,
        dims=mapping.dims,
        vector=mapping.vector,
        created=micros(mapping.created_at),
    )


async def read_rows(conn: AsyncConnection, where: ColumnElement[bool], after: int) -> list[VectorRow]:
    """One page of rows matching `where` with id > `after`, oldest first."""
    query = select(cache_vectors).where(where & (cache_vectors.c.id > after)).order_by(cache_vectors.c.id)
    result = await conn.execute(query.limit(PAGE))
    return [_row(r) for r in result]


class SerialThread:
    """One worker thread: an index's blocking calls run off the event loop, one at a time."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
