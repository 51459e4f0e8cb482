"""Reads whose work must not grow with the rows stored: a worker's batched cache lookup, the jobs
read together in one turn (`Jobs.get`) and a semantic search's neighbours. Work is counted in
SQLite VM steps (a progress handler on every connection): exact and untimed. A read that scans
grows with every row; one that seeks each key asked does not.

SQLite only: it keeps no statistics here, and planned these reads as scans of the tenant's rows
(a tenant judged to hold about ten) until the cache index led with the key and jobs were read by
id alone. PostgreSQL plans them by its statistics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from storage.jobs import JobRecord, NewJob
from storage.sql.cache import CachedAnswer
from storage.sql.store import Store
from tests.test_pipeline import chat

TENANT = "acme"
SINCE = datetime.now(UTC) - timedelta(hours=1)


class Steps:
    """VM steps run on the store's connections, counted in thousands."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        event.listen(store.engine.sync_engine, "connect", self._install)

    def _install(self, dbapi_connection: Any, _record: Any) -> None:
        def tick() -> int:
            self.count += 1
            return 0  # go on

        dbapi_connection._connection._conn.set_progress_handler(tick, 1000)

    async def of(self, read: Callable[[], Awaitable[object]]) -> int:
        before = self.count
        await read()
        return self.count - before


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/reads.db")
    yield store
    await store.close()


async def add_answers(store: Store, n: int, *, start: int) -> list[str]:
    """`n` succeeded jobs of TENANT, each the provider answer of key `key-<i>`; their ids."""
    items = [NewJob(f"j{i}", chat(f"Question {i}")) for i in range(start, start + n)]
    created = await store.batches.create(items, tenant=TENANT, user_id="u1")
    answered = text(
        "UPDATE jobs SET status = 'succeeded', cache_key = 'key-' || (seq + :start), "
        'result = \'{"content": "ok"}\', finished_at = :now WHERE batch_id = :batch'
    )
    async with store.engine.begin() as conn:
        await conn.execute(answered, {"start": start, "now": datetime.now(UTC), "batch": created.batch_id})
    return created.job_ids


async def test_a_batched_cache_lookup_seeks_each_key(store: Store) -> None:
    await add_answers(store, 400, start=0)
    steps = Steps(store)
    await store.engine.dispose()  # every connection from here on counts

    def lookup() -> Awaitable[list[list[CachedAnswer]]]:  # 40 keys: one query, as a worker's turn
        return asyncio.gather(
            *(store.cache.lookup(TENANT, f"key-{i}", since=SINCE) for i in range(0, 400, 10))
        )

    found = await lookup()
    assert [len(answers) for answers in found] == [1] * 40
    small = await steps.of(lookup)
    await add_answers(store, 4000, start=400)
    large = await steps.of(lookup)
    assert large < 2 * max(small, 1), (small, large)  # a scan of the tenant's keys: about 10x


async def test_jobs_read_together_are_read_by_id(store: Store) -> None:
    ids = await add_answers(store, 400, start=0)
    steps = Steps(store)
    await store.engine.dispose()

    def read() -> Awaitable[list[JobRecord]]:  # 20 jobs in one turn: one query
        return asyncio.gather(*(store.jobs.get(job_id, tenant=TENANT) for job_id in ids[:20]))

    assert [job.id for job in await read()] == ids[:20]
    small = await steps.of(read)
    await add_answers(store, 4000, start=400)
    large = await steps.of(read)
    assert large < 2 * max(small, 1), (small, large)


async def test_a_semantic_searchs_neighbours_are_read_by_id(store: Store) -> None:
    """`answers` reads the neighbours' rows by id; another tenant's and older answers stay unserved."""
    ids = await add_answers(store, 400, start=0)
    steps = Steps(store)
    await store.engine.dispose()

    def read() -> Awaitable[dict[str, CachedAnswer]]:
        return store.cache.answers(TENANT, ids[:8], since=SINCE)

    assert sorted(await read()) == sorted(ids[:8])
    assert await store.cache.answers("globex", ids[:8], since=SINCE) == {}
    assert await store.cache.answers(TENANT, ids[:8], since=datetime.now(UTC) + timedelta(hours=1)) == {}
    small = await steps.of(read)
    await add_answers(store, 4000, start=400)
    large = await steps.of(read)
    assert large < 2 * max(small, 1), (small, large)
