"""The vector index of a PostgreSQL store without pgvector: usearch HNSW indexes in this process.

usearch rather than hnswlib: usearch is released often (hnswlib's last release is from 2023),
ships wheels for current Pythons and platforms, is typed (`py.typed`), and its indexes grow as
keys are added (hnswlib needs a `max_elements` and a resize).

One index per (tenant, grp, embedder, dims), built on its first search and kept up to date from
`cache_vectors` before each search; keys are `cache_vectors.id`. So a process holds only the
groups it searches, and every process sees every other's rows.

PostgreSQL hands out ids before commit, so a row with a smaller id can commit after a larger one
was read. Each catch-up therefore reads the rows with id > the last one seen, and the ids (not the
vectors) of the group's rows created in the last `LATE_COMMIT_S` seconds; a late one is then fetched.

`since` is applied to the rows a search returns: it asks for more than `k` and widens until `k`
rows pass or the whole group was searched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import case, select
from sqlalchemy.ext.asyncio import AsyncConnection
from usearch.index import Index

from storage.sql.database import Database
from storage.sql.schema import cache_vectors
from storage.sql.vectors.model import (
    Neighbour,
    SerialThread,
    VectorEntry,
    in_group,
    insert_vector,
    micros,
    pack,
)

__all__ = ["LATE_COMMIT_S", "UsearchIndex"]

# How long after its created_at a row may still commit (a group commit's transaction is far shorter).
LATE_COMMIT_S = 60.0
_OVERSAMPLE = 4  # with `since`, first ask for this many times k

_GroupKey = tuple[str, str, str, int]


@dataclass
class _Group:
    """One group's HNSW index and what a search needs beside it."""

    index: Index
    last_id: int = 0
    job_ids: dict[int, str] = field(default_factory=dict)
    created: dict[int, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def add(self, ids: list[int], blobs: list[bytes]) -> None:
        vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), -1)
        self.index.add(np.asarray(ids, dtype=np.uint64), vectors)

    def search(self, query: bytes, k: int, since: int | None) -> list[Neighbour]:
        size = len(self.index)
        if size == 0:
            return []
        vector = np.frombuffer(query, dtype="<f4")
        count = min(size, k if since is None else k * _OVERSAMPLE)
        while True:
            matches = self.index.search(vector, count)
            found = [
                Neighbour(self.job_ids[int(key)], 1.0 - float(distance))
                for key, distance in zip(matches.keys, matches.distances, strict=True)
                if since is None or self.created[int(key)] >= since
            ]
            if len(found) >= k or count >= size:
                return found[:k]
            count = min(size, count * _OVERSAMPLE)


class UsearchIndex:
    """usearch HNSW indexes in this process, one per group, fed from `cache_vectors`."""

    name = "usearch"

    def __init__(self, db: Database) -> None:
        self._db = db
        self._thread = SerialThread("routeq-vectors")
        self._groups: dict[_GroupKey, _Group] = {}

    async def add(self, entry: VectorEntry) -> None:
        """Insert the `cache_vectors` row; the next search of its group adds it to the index."""
        await insert_vector(self._db, entry)

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
        query = pack(vector)
        key = (tenant, grp, embedder, len(vector))
        group = self._groups.get(key)
        if group is None:
            index = Index(ndim=len(vector), metric="cos", dtype="f32")
            group = self._groups.setdefault(key, _Group(index))
        async with group.lock:
            await self._catch_up(key, group)
        after = micros(since) if since is not None else None
        return await self._thread.run(group.search, query, k, after)

    async def _catch_up(self, key: _GroupKey, group: _Group) -> None:
        c = cache_vectors.c
        recent = self._db.now() - timedelta(seconds=LATE_COMMIT_S)
        # The vector only for new rows; for recent rows already seen, just the id.
        query = select(c.id, c.job_id, c.created_at, case((c.id > group.last_id, c.vector))).where(
            in_group(*key) & ((c.id > group.last_id) | (c.created_at >= recent))
        )
        async with self._db.reading() as conn:
            rows = [r for r in (await conn.execute(query)).all() if r[0] not in group.job_ids]
            late = [r[0] for r in rows if r[3] is None]
            blobs = dict(zip(late, await _vectors(conn, late), strict=True)) if late else {}
        if not rows:
            return
        ids = [r[0] for r in rows]
        await self._thread.run(group.add, ids, [r[3] if r[3] is not None else blobs[r[0]] for r in rows])
        for row_id, job_id, created_at, _ in rows:
            group.job_ids[row_id] = job_id
            group.created[row_id] = micros(created_at)
        group.last_id = max(group.last_id, *ids)

    async def close(self) -> None:
        self._groups.clear()
        self._thread.close()


async def _vectors(conn: AsyncConnection, ids: list[int]) -> list[bytes]:
    result = await conn.execute(
        select(cache_vectors.c.id, cache_vectors.c.vector).where(cache_vectors.c.id.in_(ids))
    )
    found = dict(result.all())
    return [found[i] for i in ids]
