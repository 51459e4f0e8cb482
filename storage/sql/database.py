"""What every SQL room shares: the engine, the group committer, turns on a single connection, a clock.

`Store` builds one `Database` and hands it to each room (batches, jobs, runs, ledger, files, API
keys); a room never opens an engine of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Insert, Table, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.jobs import AnyTenant, TenantScope
from storage.sql.engine import insert_ignoring, is_single_connection
from storage.sql.group_commit import GroupCommitter
from storage.sql.writer import WriterThread, has_writer_thread

__all__ = ["Database", "owned_by", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Database:
    """One engine and one group committer; reads and writes of every SQL room go through here."""

    def __init__(self, engine: AsyncEngine, *, now: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.now = now
        # Every write goes through one group committer: concurrent jobs share transactions, and on
        # SQLite this process is then a single writer instead of many waiting on its lock.
        # In-memory SQLite has one shared connection: reads and write groups then take turns.
        self._turns: asyncio.Lock | None = asyncio.Lock() if is_single_connection(engine) else None
        # A SQLite file's groups of plain writes run whole on a thread of their own (sql/writer.py).
        self.writer = WriterThread(engine) if has_writer_thread(engine) else None
        self.writes = GroupCommitter(engine, lock=self._turns, thread=self.writer)

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._turns or nullcontext(), self.engine.connect() as conn:
            yield conn

    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reads (it waits its turn on an in-memory SQLite's one connection)."""
        return self._reading()

    def insert_ignoring_duplicates(self, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING in this engine's dialect."""
        return insert_ignoring(self.engine.dialect.name, table)

    async def close(self) -> None:
        await self.writes.close()
        if self.writer is not None:
            await self.writer.close()
        await self.engine.dispose()


def owned_by(column: ColumnElement[str], tenant: TenantScope) -> ColumnElement[bool]:
    """The condition that a row belongs to `tenant` (always true for `ANY_TENANT`)."""
    if isinstance(tenant, AnyTenant):
        return true()
    return column == tenant
