"""Plain (synchronous) writes in the group committer: on a SQLite file a group of them is one
transaction on the writer thread; beside an async write, or on a single-connection engine, they run
through `run_sync` in the group's async transaction."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.sql.engine import create_engine
from storage.sql.group_commit import GroupCommitter
from storage.sql.writer import WriterThread, has_writer_thread
from tests.backends import sqlite_file_engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    ddl = "CREATE TABLE t (k INTEGER PRIMARY KEY, thread TEXT)"
    async with sqlite_file_engine(tmp_path / "g.db", ddl) as made:
        yield made


def plain_insert(k: int) -> Callable[[Connection], int]:
    """A plain write inserting `k` and the name of the thread it ran on; returns `k`."""

    def write(conn: Connection) -> int:
        conn.execute(
            text("INSERT INTO t (k, thread) VALUES (:k, :t)"), {"k": k, "t": threading.current_thread().name}
        )
        return k

    return write


async def rows(engine: AsyncEngine) -> dict[int, str]:
    async with engine.connect() as conn:
        return {k: thread for k, thread in (await conn.execute(text("SELECT k, thread FROM t"))).all()}


async def test_plain_writes_on_a_sqlite_file_commit_in_groups_on_the_writer_thread(
    engine: AsyncEngine,
) -> None:
    assert has_writer_thread(engine)
    writer = WriterThread(engine)
    committer = GroupCommitter(engine, thread=writer)

    assert await asyncio.gather(*(committer.run_sync(plain_insert(k)) for k in range(50))) == list(range(50))
    assert committer.groups < 5  # fifty concurrent writes shared a few transactions
    # A duplicate key fails its group; retried one by one, only the duplicate fails.
    outcomes = await asyncio.gather(
        *(committer.run_sync(plain_insert(k)) for k in [*range(50, 60), 7, *range(60, 70)]),
        return_exceptions=True,
    )
    await committer.close()
    await writer.close()

    assert [type(o) for o in outcomes if isinstance(o, BaseException)] == [IntegrityError]
    assert sorted(o for o in outcomes if isinstance(o, int)) == list(range(50, 70))
    found = await rows(engine)
    assert sorted(found) == list(range(70))
    assert {thread.split("_")[0] for thread in found.values()} == {"routeq-sql-writer"}


async def test_the_writer_threads_connection_keeps_more_pages_and_checkpoints_less(
    engine: AsyncEngine,
) -> None:
    writer = WriterThread(engine)

    def settings(conn: Connection) -> tuple[object, ...]:
        pragmas = ("journal_mode", "synchronous", "cache_size", "wal_autocheckpoint")
        return tuple(conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in pragmas)

    found = await writer.transaction(settings)
    await writer.close()
    # The async engine's PRAGMAs (WAL, synchronous NORMAL = 1), then 64 MiB and 20,000 pages.
    assert found == ("wal", 1, -65_536, 20_000)


async def test_a_group_with_an_async_write_runs_its_plain_writes_in_the_same_transaction(
    engine: AsyncEngine,
) -> None:
    writer = WriterThread(engine)
    committer = GroupCommitter(engine, thread=writer)

    async def async_insert(conn: AsyncConnection) -> str:
        await conn.execute(text("INSERT INTO t (k, thread) VALUES (100, 'async')"))
        return "async"

    def plain_batch(conn: Connection, items: list[int]) -> list[int]:
        conn.execute(text("INSERT INTO t (k, thread) VALUES (:k, 'batched')"), [{"k": k} for k in items])
        return [k * 2 for k in items]

    results = await asyncio.gather(
        committer.run(async_insert),
        committer.run_sync(plain_insert(1)),
        committer.run_sync_batched(plain_batch, 10),
        committer.run_sync_batched(plain_batch, 11),
    )
    await committer.close()
    await writer.close()

    assert list(results) == ["async", 1, 20, 22]
    assert committer.groups == 1
    found = await rows(engine)
    assert found == {100: "async", 1: threading.current_thread().name, 10: "batched", 11: "batched"}


async def test_a_cancelled_caller_waits_for_the_writer_threads_transaction_to_end(
    engine: AsyncEngine,
) -> None:
    writer = WriterThread(engine)
    entered, release = threading.Event(), threading.Event()

    def slow(conn: Connection) -> None:
        conn.execute(text("INSERT INTO t (k, thread) VALUES (1, 'slow')"))
        entered.set()
        release.wait(timeout=30)

    task = asyncio.create_task(writer.transaction(slow))
    await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    await asyncio.sleep(0)  # the cancellation is delivered: the task now waits for the thread
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The transaction was already running when the cancel came: it committed, and said so by
    # finishing before the caller heard "cancelled".
    assert await rows(engine) == {1: "slow"}
    await writer.close()


async def test_in_memory_sqlite_has_no_writer_thread() -> None:
    engine = create_engine("sqlite+aiosqlite://")
    try:
        assert not has_writer_thread(engine)
    finally:
        await engine.dispose()
