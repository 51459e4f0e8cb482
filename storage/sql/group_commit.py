"""Group commit: writes from many concurrent jobs share one transaction.

A worker runs hundreds of jobs at once and each needs two small write transactions (start, finish).
Committing each alone costs a connection checkout, BEGIN and COMMIT per write, and on SQLite a wait
for the single writer. Here writes queue up while the previous group commits; the next group takes
everything queued, runs each write in turn on one connection and commits once. The latency of a
write stays about one transaction; the cost per write drops with load.

A write must be safe to run inside a shared transaction (routeq's are single UPDATE/INSERT ... ON
CONFLICT statements). If a group's transaction fails, its writes are retried one by one, so one bad
write cannot fail the others.

Writes of one kind can also share their statements (`run_batched`): the items queued for one
`BatchWrite` run as one call with all of them (one UPDATE ... WHERE id IN, one executemany INSERT)
instead of a statement per job. On SQLite every statement is several hops to aiosqlite's thread
(cursor, execute, fetch, close), so a job's start and finish cost two dozen thread hops, written
one by one; batched, a group pays them once.

Writes are async functions of an `AsyncConnection` (`run`, `run_batched`) or plain functions of a
synchronous `Connection` (`run_sync`, `run_sync_batched`), as SQLAlchemy's `run_sync` takes. On a
SQLite file a group made only of plain writes runs whole on the writer thread (sql/writer.py): one
trip to a thread for the transaction instead of several a statement. Anywhere else (PostgreSQL,
in-memory SQLite, a group with an async write in it) plain writes run through `run_sync` on the
group's async connection, in the same transaction as the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.sql.writer import WriterThread

__all__ = ["GroupCommitter", "Write"]

logger = logging.getLogger("routeq.storage")

T = TypeVar("T")
Item = TypeVar("Item")
Write = Callable[[AsyncConnection], Awaitable[T]]
BatchWrite = Callable[[AsyncConnection, list[Item]], Awaitable[list[T]]]
"""Writes many items of one kind at once; returns each item's result, in order."""
SyncWrite = Callable[[Connection], T]
SyncBatchWrite = Callable[[Connection, list[Item]], list[T]]


@dataclass(slots=True)
class _Pending:
    write: Any  # one of Write, BatchWrite, SyncWrite, SyncBatchWrite, as the flags say
    future: asyncio.Future[Any]
    item: Any = None
    batched: bool = False
    sync: bool = False


class GroupCommitter:
    """Runs writes submitted concurrently in shared transactions (one flusher task at a time)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_group: int = 256,
        lock: asyncio.Lock | None = None,
        thread: WriterThread | None = None,
    ) -> None:
        self._engine = engine
        self._lock = lock  # held around each transaction when the engine has a single connection
        self._thread = thread  # where groups of plain writes run whole (a SQLite file's)
        self._max_group = max_group
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0  # transactions committed, for tests and diagnostics
        self.writes = 0

    async def run(self, write: Write[T]) -> T:
        """Run the async `write(connection)` in the next group's transaction and return its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue(_Pending(write, future))
        return await future

    async def run_batched(self, write: BatchWrite[Item, T], item: Item) -> T:
        """Run `write(connection, [item, ...])` once for every item of that write in the next group."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue(_Pending(write, future, item, batched=True))
        return await future

    async def run_sync(self, write: SyncWrite[T]) -> T:
        """Run the plain function `write(connection)` in the next group's transaction."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue(_Pending(write, future, sync=True))
        return await future

    async def run_sync_batched(self, write: SyncBatchWrite[Item, T], item: Item) -> T:
        """Run the plain function `write(connection, [item, ...])` once for every item of that write
        in the next group."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue(_Pending(write, future, item, batched=True, sync=True))
        return await future

    def _queue(self, pending: _Pending) -> None:
        self._pending.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def close(self) -> None:
        """Wait for queued writes to finish."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        try:
            await self._flush_pending()
        except asyncio.CancelledError:
            for pending in self._pending:
                pending.future.cancel()
            raise

    async def _flush_pending(self) -> None:
        while self._pending:
            group, self._pending = self._pending[: self._max_group], self._pending[self._max_group :]
            try:
                results = await self._commit(group)
            except Exception:
                logger.debug("group of %d writes failed; retrying them one by one", len(group), exc_info=True)
                await self._one_by_one(group)
                continue
            for pending, result in zip(group, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    async def _commit(self, group: list[_Pending]) -> list[Any]:
        """One transaction: unbatched writes in order, then each batched write once with its items."""
        if self._thread is not None and all(pending.sync for pending in group):
            results = await self._thread.transaction(lambda conn: self._run_sync(conn, group))
        else:
            async with self._lock or contextlib.nullcontext(), self._engine.begin() as conn:
                results = await self._run_async(conn, group)
        self.groups += 1
        self.writes += len(group)
        return results

    @staticmethod
    async def _run_async(conn: AsyncConnection, group: list[_Pending]) -> list[Any]:
        results: list[Any] = [None] * len(group)
        for members, pending, args in _steps(group):
            reply = await (
                conn.run_sync(pending.write, *args) if pending.sync else pending.write(conn, *args)
            )
            _place(results, members, pending, reply)
        return results

    @staticmethod
    def _run_sync(conn: Connection, group: list[_Pending]) -> list[Any]:
        """The group on the writer thread: every write in it is plain."""
        results: list[Any] = [None] * len(group)
        for members, pending, args in _steps(group):
            _place(results, members, pending, pending.write(conn, *args))
        return results

    async def _one_by_one(self, group: list[_Pending]) -> None:
        for pending in group:
            try:
                [result] = await self._commit([pending])
            except Exception as exc:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            else:
                if not pending.future.done():
                    pending.future.set_result(result)


def _steps(group: list[_Pending]) -> list[tuple[list[int], _Pending, tuple[Any, ...]]]:
    """The calls a group makes, in order: each unbatched write (as queued), then each batched write
    once with its members' items. A step is (indexes of the writes it answers, the write, the
    arguments after the connection)."""
    steps: list[tuple[list[int], _Pending, tuple[Any, ...]]] = []
    batches: dict[Any, list[int]] = {}
    for n, pending in enumerate(group):
        if pending.batched:
            batches.setdefault(pending.write, []).append(n)
        else:
            steps.append(([n], pending, ()))
    for members in batches.values():
        steps.append((members, group[members[0]], ([group[n].item for n in members],)))
    return steps


def _place(results: list[Any], members: list[int], pending: _Pending, reply: Any) -> None:
    """Put a step's reply in `results`: a batched write replies with one result per member."""
    if pending.batched:
        for n, result in zip(members, reply, strict=True):
            results[n] = result
    else:
        results[members[0]] = reply
