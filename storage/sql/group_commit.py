"""Group commit: writes from many concurrent jobs share one transaction.

A worker runs hundreds of jobs at once and each needs two small write transactions (start, finish).
Committing each alone costs a connection checkout, BEGIN and COMMIT per write, and on SQLite a wait
for the single writer. Here writes queue up while the previous group commits; the next group takes
everything queued, runs each write in turn on one connection and commits once. The latency of a
write stays about one transaction; the cost per write drops with load.

A write must be safe to run inside a shared transaction (routeq's are single UPDATE/INSERT ... ON
CONFLICT statements). If a group's transaction fails, its writes are retried one by one, so one bad
write cannot fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["GroupCommitter", "Write"]

logger = logging.getLogger("routeq.storage")

T = TypeVar("T")
Write = Callable[[AsyncConnection], Awaitable[T]]
_Pending = tuple[Write[Any], "asyncio.Future[Any]"]


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
        self._pending.append((write, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def close(self) -> None:
        """Wait for queued writes to finish."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        try:
            await self._flush_pending()
        except asyncio.CancelledError:
            for _, future in self._pending:
                future.cancel()
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
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _commit(self, group: list[_Pending]) -> list[Any]:
        async with self._lock or contextlib.nullcontext(), self._engine.begin() as conn:
            results = [await write(conn) for write, _ in group]
        self.groups += 1
        self.writes += len(group)
        return results

    async def _one_by_one(self, group: list[_Pending]) -> None:
        for write, future in group:
            try:
                [result] = await self._commit([(write, future)])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)
