"""A fleet duty done once per interval by one worker: the lifecycle the sweeper and the eval beat share.

Every worker runs the duty's `Beat`; each beat, `tick` takes a Redis lock (its own key, left to
expire after one interval) and does the work only if it got it, so the fleet does it about once
per interval however many workers there are. A failed tick (Redis, SQL or the network) is logged
and tried again next interval. `close` lets a tick in progress finish (cancelling a query would cost
its database connection) and cancels it only past the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["Beat"]

logger = logging.getLogger("routeq.worker")

CLOSE_GRACE_S = 10.0


class Beat:
    """Runs `tick` every `interval_s` in a task of its own, from `start` to `close` (none when 0).

    `tick` starts with `_take_lock`: the duty's `lock_key`, set to this worker's id (`holder`) for
    one interval if no worker holds it.
    """

    name = "beat"  # in the task's name and the log lines

    def __init__(self, redis: Redis, *, lock_key: str, holder: str, interval_s: float) -> None:
        self._redis = redis
        self._lock_key = lock_key
        self._holder = holder
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def tick(self) -> object:
        """One beat's work (when this worker holds the duty's lock)."""
        raise NotImplementedError

    def _lock_ms(self) -> int:
        return max(1, int(self._interval_s * 1000))

    async def _take_lock(self) -> bool:
        """Whether this worker got the duty's lock for this interval (left to expire, not released)."""
        return bool(await self._redis.set(self._lock_key, self._holder, nx=True, px=self._lock_ms()))

    def start(self) -> None:
        if self._interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._beat(), name=f"routeq-{self.name}")

    async def close(self) -> None:
        """Stop after the tick in progress, if any (cancelled only if it outlasts the grace)."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=CLOSE_GRACE_S)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _beat(self) -> None:
        # Workers started together would all try at once; a random phase spreads them out.
        wait_s = random.uniform(0, self._interval_s)
        while not await self._stopped_within(wait_s):
            try:
                await self.tick()
            except (RedisError, SQLAlchemyError, OSError) as exc:
                logger.warning("%s failed (%s); trying again in %gs", self.name, exc, self._interval_s)
            wait_s = self._interval_s

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait `seconds`, or less if `close` is called meanwhile; True when it was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return self._stopping.is_set()
