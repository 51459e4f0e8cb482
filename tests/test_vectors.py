"""The semantic cache's vector index on every backend: in-memory SQLite, a SQLite file (sqlite-vec
sidecars) and PostgreSQL (pgvector where the server has it; usearch in-process here and in CI)."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, insert, select

from router_core.models import ChatRequest, Message
from storage.jobs import NewJob
from storage.sql.engine import connect_database
from storage.sql.schema import cache_vectors
from storage.sql.store import Store
from storage.sql.vectors import VectorEntry, VectorIndex, has_pgvector, in_process, open_vector_index
from storage.sql.vectors.in_process import UsearchIndex
from storage.sql.vectors.model import insert_vector
from storage.sql.vectors.sidecar import SIDECAR_SUFFIX, sidecar_path
from tests.backends import DATABASE_ENV, service_url

GRP = "g" * 64
EMB = "embed-a"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@dataclass
class World:
    """A backend's URL and what a test opened on it (closed at the end); `now` drives every store."""

    kind: str
    url: str
    now: list[datetime] = field(default_factory=lambda: [T0])
    stores: list[Store] = field(default_factory=list)
    indexes: list[VectorIndex] = field(default_factory=list)

    async def store(self) -> Store:
        """A store on the backend: a second call is a second process's store (except in memory,
        where there is only one database)."""
        if self.kind == "memory" and self.stores:
            return self.stores[0]
        store = Store(await connect_database(self.url), now=lambda: self.now[0])
        self.stores.append(store)
        return store

    async def index(self, store: Store | None = None) -> VectorIndex:
        index = await open_vector_index(store or await self.store())
        self.indexes.append(index)
        return index

    async def close(self) -> None:
        for index in self.indexes:
            await index.close()
        for store in self.stores:
            await store.close()


@pytest.fixture(params=["memory", "file", "postgres"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    if request.param == "memory":
        url = "sqlite+aiosqlite://"
    elif request.param == "file":
        url = f"sqlite+aiosqlite:///{tmp_path / 'routeq.db'}"
    else:
        url = service_url(DATABASE_ENV)
    opened = World(request.param, url)
    if request.param == "postgres":
        await _clear(await opened.store())
    try:
        yield opened
    finally:
        if request.param == "postgres":
            await _clear(opened.stores[0])
        await opened.close()


async def _clear(store: Store) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(delete(cache_vectors))


async def jobs(store: Store, tenant: str, n: int) -> list[str]:
    request = ChatRequest(messages=[Message(role="user", content="hi")])
    created = await store.batches.create(
        [NewJob(f"q{i}", request) for i in range(n)], tenant=tenant, user_id="u"
    )
    return created.job_ids


def entry(
    job_id: str, vector: list[float], *, tenant: str = "acme", grp: str = GRP, emb: str = EMB
) -> VectorEntry:
    return VectorEntry(job_id=job_id, tenant=tenant, grp=grp, embedder=emb, vector=vector)


async def test_nearest_ranks_a_close_vector_high_and_a_far_one_low(world: World) -> None:
    store = await world.store()
    index = await world.index(store)
    close, far, opposite = await jobs(store, "acme", 3)
    await index.add(entry(close, [1.0, 0.0, 0.0, 0.0]))
    await index.add(entry(far, [0.0, 1.0, 0.0, 0.0]))
    await index.add(entry(opposite, [-1.0, 0.0, 0.0, 0.0]))

    found = await index.nearest("acme", GRP, EMB, [1.0, 0.05, 0.0, 0.0], k=3)

    assert [n.job_id for n in found] == [close, far, opposite]
    assert found[0].similarity > 0.99
    assert abs(found[1].similarity - 0.05) < 0.01
    assert found[2].similarity < -0.99
    assert len(await index.nearest("acme", GRP, EMB, [1.0, 0.05, 0.0, 0.0], k=1)) == 1


async def test_only_the_tenants_group_and_embedders_rows_are_compared(world: World) -> None:
    store = await world.store()
    index = await world.index(store)
    [mine] = await jobs(store, "acme", 1)
    [theirs] = await jobs(store, "globex", 1)
    other_grp, other_emb = await jobs(store, "acme", 2)
    same = [0.3, 0.4, 0.5]
    await index.add(entry(theirs, same, tenant="globex"))
    await index.add(entry(other_grp, same, grp="h" * 64))
    await index.add(entry(other_emb, same, emb="embed-b"))
    assert await index.nearest("acme", GRP, EMB, same) == []

    await index.add(entry(mine, same))
    assert [n.job_id for n in await index.nearest("acme", GRP, EMB, same, k=10)] == [mine]
    assert [n.job_id for n in await index.nearest("globex", GRP, EMB, same, k=10)] == [theirs]
    assert [n.job_id for n in await index.nearest("acme", "h" * 64, EMB, same, k=10)] == [other_grp]
    assert [n.job_id for n in await index.nearest("acme", GRP, "embed-b", same, k=10)] == [other_emb]
    # Another vector size is another embedding space: nothing to compare with.
    assert await index.nearest("acme", GRP, EMB, [0.3, 0.4]) == []


async def test_since_leaves_out_older_rows(world: World) -> None:
    store = await world.store()
    index = await world.index(store)
    old, new = await jobs(store, "acme", 2)
    await index.add(entry(old, [1.0, 0.0]))
    world.now[0] = T0 + timedelta(hours=1)
    await index.add(entry(new, [0.0, 1.0]))

    query = [1.0, 0.01]
    assert [n.job_id for n in await index.nearest("acme", GRP, EMB, query)] == [old, new]
    assert [
        n.job_id for n in await index.nearest("acme", GRP, EMB, query, since=T0 + timedelta(minutes=1))
    ] == [new]
    assert [n.job_id for n in await index.nearest("acme", GRP, EMB, query, since=T0)] == [old, new]
    assert await index.nearest("acme", GRP, EMB, query, since=T0 + timedelta(hours=2)) == []


async def test_a_second_add_of_a_job_changes_nothing(world: World) -> None:
    store = await world.store()
    index = await world.index(store)
    [job] = await jobs(store, "acme", 1)
    await index.add(entry(job, [1.0, 0.0]))
    await index.nearest("acme", GRP, EMB, [1.0, 0.0])
    await index.add(entry(job, [0.0, 1.0]))

    [found] = await index.nearest("acme", GRP, EMB, [1.0, 0.0], k=10)
    assert found.job_id == job
    assert found.similarity > 0.99
    async with store.reading() as conn:
        assert (await conn.execute(select(func.count()).select_from(cache_vectors))).scalar() == 1


async def test_two_processes_see_each_others_rows(world: World) -> None:
    first, second = await world.index(), await world.index()
    store = world.stores[-1]
    a, b = await jobs(store, "acme", 2)
    assert await second.nearest("acme", GRP, EMB, [1.0, 0.0]) == []  # built (empty) before the add

    await first.add(entry(a, [1.0, 0.0]))
    assert [n.job_id for n in await second.nearest("acme", GRP, EMB, [1.0, 0.0])] == [a]
    await second.add(entry(b, [0.0, 1.0]))
    assert [n.job_id for n in await first.nearest("acme", GRP, EMB, [0.0, 1.0])] == [b, a]
    assert [n.job_id for n in await second.nearest("acme", GRP, EMB, [0.0, 1.0])] == [b, a]


async def test_the_index_matches_the_backend(world: World) -> None:
    store = await world.store()
    index = await world.index(store)
    assert await has_pgvector(store.engine) is False  # SQLite; and this machine's PostgreSQL lacks it
    assert index.name == ("usearch" if world.kind == "postgres" else "sqlite-vec")


async def test_a_vector_without_a_norm_is_refused(world: World) -> None:
    store = await world.store()
    index = await world.index(store)
    [job] = await jobs(store, "acme", 1)
    for bad in ([], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="embedding"):
            await index.add(entry(job, bad))
        with pytest.raises(ValueError, match="embedding"):
            await index.nearest("acme", GRP, EMB, bad)
    with pytest.raises(ValueError, match="k must be at least 1"):
        await index.nearest("acme", GRP, EMB, [1.0], k=0)


def test_the_sidecar_sits_beside_the_store_file() -> None:
    assert sidecar_path("data/routeq.db") == "data/routeq.db.vectors"
    assert sidecar_path("file:data/routeq.db?mode=rwc") == "data/routeq.db.vectors"
    assert sidecar_path(None) == sidecar_path("") == sidecar_path(":memory:") == ":memory:"
    assert sidecar_path("file:x?mode=memory&cache=shared") == ":memory:"


def _remove_sqlite_file(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_a_lost_sidecar_is_rebuilt_from_sql(tmp_path: Path) -> None:
    db = tmp_path / "routeq.db"
    world = World("file", f"sqlite+aiosqlite:///{db}")
    try:
        store = await world.store()
        index = await world.index(store)
        a, b = await jobs(store, "acme", 2)
        await index.add(entry(a, [1.0, 0.0]))
        await index.add(entry(b, [0.0, 1.0]))
        assert len(await index.nearest("acme", GRP, EMB, [1.0, 0.0])) == 2
        sidecar = Path(f"{db}{SIDECAR_SUFFIX}")
        assert os.path.exists(sidecar)  # noqa: ASYNC240 - a test's quick look at a local file
        await index.close()
        world.indexes.remove(index)
        _remove_sqlite_file(sidecar)

        again = await world.index(store)
        assert [n.job_id for n in await again.nearest("acme", GRP, EMB, [1.0, 0.0])] == [a, b]
    finally:
        await world.close()


async def test_a_sidecar_left_from_an_earlier_store_is_rebuilt(tmp_path: Path) -> None:
    db = tmp_path / "routeq.db"
    first = World("file", f"sqlite+aiosqlite:///{db}")
    try:
        store = await first.store()
        index = await first.index(store)
        for job in await jobs(store, "acme", 3):
            await index.add(entry(job, [1.0, 0.0]))
        assert len(await index.nearest("acme", GRP, EMB, [1.0, 0.0])) == 3
    finally:
        await first.close()
    _remove_sqlite_file(db)  # the store file is made anew; its old sidecar is left beside it

    second = World("file", f"sqlite+aiosqlite:///{db}")
    try:
        store = await second.store()
        fresh = await jobs(store, "acme", 4)
        for job in fresh:  # ids 1 to 4: past the old sidecar's last id (3)
            await insert_vector(store.db, entry(job, [0.0, 1.0]))
        index = await second.index(store)
        assert sorted(n.job_id for n in await index.nearest("acme", GRP, EMB, [0.0, 1.0], k=10)) == sorted(
            fresh
        )
    finally:
        await second.close()


async def test_since_widens_the_search_past_newer_rows_it_leaves_out(world: World) -> None:
    """In-process HNSW applies `since` to the rows it returns: it must look further than k."""
    store = await world.store()
    index = await world.index(store)
    *old, new = await jobs(store, "acme", 41)
    await asyncio.gather(*(index.add(entry(job, [1.0, 0.001 * i])) for i, job in enumerate(old)))
    world.now[0] = T0 + timedelta(hours=1)
    await index.add(entry(new, [-1.0, 0.2]))

    found = await asyncio.gather(
        *(index.nearest("acme", GRP, EMB, [1.0, 0.0], k=1, since=world.now[0]) for _ in range(3))
    )
    assert [[n.job_id for n in f] for f in found] == [[new]] * 3
    assert found[0][0].similarity < -0.9


async def test_a_group_past_the_exact_size_moves_to_hnsw(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process index (any store): exact while small, then usearch HNSW; answers stay right."""
    monkeypatch.setattr(in_process, "EXACT_UP_TO", 8)
    store = await world.store()
    index = UsearchIndex(store.db)
    world.indexes.append(index)
    *old, new = await jobs(store, "acme", 41)
    vectors = [[1.0, 0.05 * i, 0.0] for i in range(len(old))]
    for job, vector in zip(old[:5], vectors[:5], strict=True):
        await index.add(entry(job, vector))
    assert [n.job_id for n in await index.nearest("acme", GRP, EMB, vectors[3], k=1)] == [old[3]]
    [group] = index._groups.values()
    assert group.hnsw is None

    await asyncio.gather(*(index.add(entry(j, v)) for j, v in zip(old[5:], vectors[5:], strict=True)))
    world.now[0] = T0 + timedelta(hours=1)
    await index.add(entry(new, [-1.0, 0.0, 1.0]))
    [best] = await index.nearest("acme", GRP, EMB, vectors[30], k=1)
    assert group.hnsw is not None
    assert len(group.hnsw) == 41
    assert best.job_id == old[30]
    assert best.similarity > 0.999
    # `since` leaves out the 40 nearer rows: the search widens until the new one passes.
    assert [n.job_id for n in await index.nearest("acme", GRP, EMB, vectors[0], k=1, since=world.now[0])] == [
        new
    ]


async def test_usearch_finds_a_row_that_committed_after_a_larger_id() -> None:
    """PostgreSQL hands out ids before commit: a smaller id may become visible after a larger one."""
    world = World("postgres", service_url(DATABASE_ENV))
    store = await world.store()
    await _clear(store)
    index = UsearchIndex(store.db)
    world.indexes.append(index)
    try:
        late, early = await jobs(store, "acme", 2)
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(cache_vectors).values(
                    id=10**12,
                    job_id=early,
                    tenant="acme",
                    grp=GRP,
                    embedder=EMB,
                    dims=2,
                    vector=struct.pack("<2f", 0.0, 1.0),
                    created_at=T0,
                )
            )
        assert [n.job_id for n in await index.nearest("acme", GRP, EMB, [0.0, 1.0])] == [early]

        await index.add(entry(late, [1.0, 0.0]))  # its id comes from the sequence: below 10**12
        assert [n.job_id for n in await index.nearest("acme", GRP, EMB, [1.0, 0.0])] == [late, early]
    finally:
        await _clear(store)
        await world.close()
