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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["GroupCommitter", "Write"]

logger = logging.getLogger("routeq.storage")

T = TypeVar("T")
Item = TypeVar("Item")
Write = Callable[[AsyncConnection], Awaitable[T]]
BatchWrite = Callable[[AsyncConnection, list[Item]], Awaitable[list[T]]]
"""Writes many items of one kind at once; returns each item's result, in order."""


@dataclass(slots=True)
class _Pending:
    write: Write[Any] | BatchWrite[Any, Any]
    future: asyncio.Future[Any]
    item: Any = None
    batched: bool = False


class GroupCommitter:
    """Runs writes submitted concurrently in shared transactions (one flusher task at a time)."""

    def __init__(
        self, engine: AsyncEngine, *, max_group: int = 256, lock: asyncio.Lock | None = None
    ) -> None:
        self._engine = engine
        self._lock = lock  # held around each transaction when the engine has a single connection
        self._max_group = max_group
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0  # transactions committed, for tests and diagnostics
        self.writes = 0

    async def run(self, write: Write[T]) -> T:
        """Run `write(connection)` in the next group's transaction and return its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue(_Pending(write, future))
        return await future

    async def run_batched(self, write: BatchWrite[Item, T], item: Item) -> T:
        """Run `write(connection, [item, ...])` once for every item of that write in the next group."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue(_Pending(write, future, item, batched=True))
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
        """One transaction: plain writes in order, then each batched write once with its items."""
        results: list[Any] = [None] * len(group)
        batches: dict[Any, list[int]] = {}
        async with self._lock or contextlib.nullcontext(), self._engine.begin() as conn:
            for n, pending in enumerate(group):
                if pending.batched:
                    batches.setdefault(pending.write, []).append(n)
                else:
                    results[n] = await pending.write(conn)  # type: ignore[call-arg]
            for write, members in batches.items():
                replies = await write(conn, [group[n].item for n in members])
                for n, reply in zip(members, replies, strict=True):
                    results[n] = reply
        self.groups += 1
        self.writes += len(group)
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
