"""The vector index of a PostgreSQL store without pgvector: vectors held in this process.

usearch rather than hnswlib: usearch is released often (hnswlib's last release is from 2023),
ships wheels for current Pythons and platforms, is typed (`py.typed`), and its indexes grow as
keys are added (hnswlib needs a `max_elements` and a resize).

One group per (tenant, grp, embedder, dims), loaded on its first search and kept up to date from
`cache_vectors` before each search; keys are `cache_vectors.id`. So a process holds only the
groups it searches, and every process sees every other's rows. A group of up to `EXACT_UP_TO` rows
is a matrix searched exactly (faster than the SQL round trip before it, and no graph to build: an
HNSW graph of 10,000 vectors of 256 floats takes seconds to build and its recall is not quite 1);
past that the group moves to a usearch HNSW index (cosine).

PostgreSQL hands out ids before commit, so a row with a smaller id can commit after a larger one
was read. Each catch-up therefore reads the rows with id > the last one seen, and counts the group's
rows below it created in the last `LATE_COMMIT_S` seconds: when SQL has more than the index holds,
their ids are read and the late ones fetched.

`since` filters the matrix before an exact search; on HNSW it is applied to the rows a search
returns, which asks for more than `k` and widens until `k` rows pass or the whole group was searched.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import func, select
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
    query_bytes,
)

__all__ = ["EXACT_UP_TO", "LATE_COMMIT_S", "UsearchIndex"]

# How long after its created_at a row may still commit (a group commit's transaction is far shorter).
LATE_COMMIT_S = 60.0
_OVERSAMPLE = 4  # with `since`, HNSW first asks for this many times k
# A group up to this many rows is searched exactly (numpy: about a millisecond per 10,000 rows of
# 256 floats, and no graph to build); a larger one gets a usearch HNSW index.
EXACT_UP_TO = 20_000

_GroupKey = tuple[str, str, str, int]
_ROWS = select(cache_vectors.c.id, cache_vectors.c.job_id, cache_vectors.c.created_at, cache_vectors.c.vector)
_COUNT = select(func.count()).select_from(cache_vectors)


@dataclass
class _Group:
    """One group's vectors: a matrix searched exactly, or past `EXACT_UP_TO` rows an HNSW index.

    `add` and `search` run on the index's one thread; the rest on the event loop.
    """

    dims: int
    last_id: int = 0
    job_ids: dict[int, str] = field(default_factory=dict)
    ordered_created: list[int] = field(default_factory=list)  # sorted: count rows held since a time
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Exact mode: ids, unit vectors and created times, row for row (chunks joined on search).
    keys: list[np.ndarray] = field(default_factory=list)
    units: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)
    hnsw: Index | None = None
    created: dict[int, int] = field(default_factory=dict)  # for `since` on HNSW matches

    def hold(self, row_id: int, job_id: str, created: int) -> None:
        self.job_ids[row_id] = job_id
        bisect.insort(self.ordered_created, created)
        if self.hnsw is not None:
            self.created[row_id] = created

    def held_since(self, created: int) -> int:
        return len(self.ordered_created) - bisect.bisect_left(self.ordered_created, created)

    def add(self, ids: list[int], blobs: list[bytes], created: list[int]) -> None:
        vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), self.dims)
        if self.hnsw is not None:
            self.hnsw.add(np.asarray(ids, dtype=np.uint64), vectors)
            return
        self.keys.append(np.asarray(ids, dtype=np.int64))
        self.units.append(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        self.times.append(np.asarray(created, dtype=np.int64))
        keys, units, times = self._joined()
        if len(keys) > EXACT_UP_TO:
            self.hnsw = Index(ndim=self.dims, metric="cos", dtype="f32")
            self.hnsw.add(keys.astype(np.uint64), units)
            self.created = dict(zip(keys.tolist(), times.tolist(), strict=True))
            self.keys, self.units, self.times = [], [], []

    def _joined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self.keys) > 1:
            self.keys = [np.concatenate(self.keys)]
            self.units = [np.concatenate(self.units)]
            self.times = [np.concatenate(self.times)]
        return self.keys[0], self.units[0], self.times[0]

    def search(self, query: bytes, k: int, since: int | None) -> list[Neighbour]:
        vector = np.frombuffer(query, dtype="<f4")
        if self.hnsw is not None:
            return self._search_hnsw(vector, k, since)
        if not self.keys:
            return []
        keys, units, times = self._joined()
        if since is not None:
            recent = times >= since
            keys, units = keys[recent], units[recent]
        count = min(k, len(keys))
        if count == 0:
            return []
        # einsum, not `@`: a BLAS matrix-vector product spreads over threads, and on a busy machine
        # (workers beside it) that is several times slower than einsum's one-thread SIMD loop.
        similarities = np.clip(np.einsum("ij,j->i", units, vector / np.linalg.norm(vector)), -1.0, 1.0)
        best = np.argpartition(-similarities, count - 1)[:count]
        best = best[np.lexsort((keys[best], -similarities[best]))]  # most similar, then oldest, first
        return [Neighbour(self.job_ids[int(keys[i])], float(similarities[i])) for i in best]

    def _search_hnsw(self, vector: np.ndarray, k: int, since: int | None) -> list[Neighbour]:
        assert self.hnsw is not None
        size = len(self.hnsw)
        count = min(size, k if since is None else k * _OVERSAMPLE)
        while True:
            matches = self.hnsw.search(vector, count)
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
        query = query_bytes(vector, k)
        key = (tenant, grp, embedder, len(vector))
        group = self._groups.setdefault(key, _Group(len(vector)))
        async with group.lock:
            await self._catch_up(key, group)
        after = micros(since) if since is not None else None
        return await self._thread.run(group.search, query, k, after)

    async def _catch_up(self, key: _GroupKey, group: _Group) -> None:
        c = cache_vectors.c
        in_it = in_group(*key)
        recent = self._db.now() - timedelta(seconds=LATE_COMMIT_S)
        behind = in_it & (c.id <= group.last_id) & (c.created_at >= recent)
        async with self._db.reading() as conn:
            rows = list((await conn.execute(_ROWS.where(in_it & (c.id > group.last_id)))).all())
            # Late commits: the recent rows below the last id seen outnumber the ones held.
            if group.last_id and (await conn.execute(_COUNT.where(behind))).scalar() != group.held_since(
                micros(recent)
            ):
                late = [i for (i,) in (await conn.execute(select(c.id).where(behind))).all()]
                late = [i for i in late if i not in group.job_ids]
                if late:
                    rows += (await conn.execute(_ROWS.where(c.id.in_(late)))).all()
        if not rows:
            return
        ids, created = [r.id for r in rows], [micros(r.created_at) for r in rows]
        await self._thread.run(group.add, ids, [r.vector for r in rows], created)
        for r, when in zip(rows, created, strict=True):
            group.hold(r.id, r.job_id, when)
        group.last_id = max(group.last_id, *ids)

    async def close(self) -> None:
        self._groups.clear()
        self._thread.close()
