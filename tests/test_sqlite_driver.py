"""storage/sql/sqlite_driver.py: SQLAlchemy's aiosqlite adapter with one thread hop a statement.

The engine `storage.sql.engine.create_engine` builds for a SQLite file behaves as the stock adapter
(rows, RETURNING, row counts, last row ids, executemany, errors, rollbacks), with fewer calls on
aiosqlite's thread: one per statement, none for a rollback of no transaction.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite.core
import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.backends import sqlite_file_engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"
    async with sqlite_file_engine(tmp_path / "driver.db", ddl) as made:
        yield made


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Calls made on aiosqlite's thread, by the function run there."""
    made: collections.Counter[str] = collections.Counter()
    run: Callable[..., Any] = aiosqlite.core.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        made[getattr(fn, "__name__", repr(fn))] += 1
        return await run(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
    return made


async def test_statements_behave_as_with_the_stock_adapter(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        assert (inserted.rowcount, inserted.lastrowid) == (1, 1)
        many = await conn.execute(text("INSERT INTO t (name) VALUES (:name)"), [{"name": "b"}, {"name": "c"}])
        assert many.rowcount == 2
        returned = await conn.execute(text("UPDATE t SET name = upper(name) WHERE id > 1 RETURNING id, name"))
        assert sorted(returned.all()) == [(2, "B"), (3, "C")]
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, name FROM t ORDER BY id"))
        assert rows.keys() == ["id", "name"]
        assert rows.all() == [(1, "a"), (2, "B"), (3, "C")]
        assert (await conn.execute(text("SELECT count(*) FROM t WHERE id > 9"))).scalar_one() == 0
        none = await conn.execute(text("DELETE FROM t WHERE id > 9"))
        assert none.rowcount == 0
        await conn.rollback()


async def test_errors_are_sqlalchemys_and_a_failed_transaction_rolls_back(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('x')"))
        with pytest.raises(exc.IntegrityError):
            await conn.execute(text("INSERT INTO t (name) VALUES ('x')"))  # the UNIQUE name
        await conn.rollback()
        with pytest.raises(exc.OperationalError, match="no such table"):
            await conn.execute(text("SELECT * FROM nowhere"))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0  # 'x' undone


async def test_one_hop_a_statement_and_none_for_a_rollback_of_no_transaction(
    engine: AsyncEngine, hops: collections.Counter[str]
) -> None:
    async with engine.connect() as conn:  # warm: the pool's connection opened
        await conn.execute(text("SELECT 1"))
    hops.clear()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
        assert [row async for row in await conn.stream(text("SELECT id FROM t"))] == []
    # Two statements, each one call on the thread (the stock adapter: open, execute, fetch, close);
    # back in the pool with no transaction open: no rollback sent. The streamed one is a
    # server-side cursor, SQLAlchemy's own (several calls).
    assert hops["_run"] == 1
    assert "rollback" not in hops
    hops.clear()
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('w')"))
        # Not committed: this transaction is rolled back on its way back to the pool.
    assert hops == {"_run": 1, "rollback": 1}
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
