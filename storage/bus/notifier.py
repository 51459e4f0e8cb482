"""One pub/sub connection per process that wakes every local waiter: no connection per waiting request.

`Client.wait` (a job's completion) and `StreamRelay.follow` (a streamed job's next pieces) used to
hold a Redis connection each while they waited: 150 waiting chat completions held 129 connections.
A `Notifier` subscribes once, to the patterns of both channels:

    routeq:job-done:<job>        published by the terminal-event script
    routeq:chunks-added:<job>    published with each piece a worker appends

and wakes the waiters registered for the channel a message names. A waiter registers first, then
reads SQL or the stream, then waits: a message sent between the read and the wait is not lost.
A worker process subscribes the same way (`patterns=`) to its queue's wake-up channel,
`routeq:queue-wake:<queue>`.

Messages published while the subscription is down (a Redis restart, a dropped connection) are
lost, so every time the subscription is (re)confirmed every registered waiter is woken to read
again: a waiter can be woken for nothing, never left asleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from storage import keys
from storage.connections import as_text

__all__ = ["CLIENT_PATTERNS", "Notifier", "Signal", "exact_pattern"]

logger = logging.getLogger("routeq.storage")

# What a producer process (client, API) waits on.
CLIENT_PATTERNS = (keys.job_done_channel("*"), keys.job_chunks_added("*"))


def exact_pattern(channel: str) -> str:
    """A PSUBSCRIBE pattern matching only `channel` (its glob characters escaped)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in channel)


class Signal:
    """A waiter's wake-up: set by a message on its channel or by a (re)subscription.

    `sets` counts them; `nudge` wakes the waiter without one (for a wake-up of its owner's making).
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.sets = 0

    async def wait(self) -> None:
        """Wait for the next wake-up (one that came since the last `wait` returns at once)."""
        await self._event.wait()
        self._event.clear()

    def set(self) -> None:
        self.sets += 1
        self._event.set()

    def nudge(self) -> None:
        self._event.set()


class Notifier:
    """Dispatches job-done and chunk pings to this process's waiters over one subscription.

    Args:
        redis: the process's Redis; the subscription takes one connection from its pool.
        patterns: what to subscribe to (one PSUBSCRIBE); the job-done and chunk channels by default.
        retry_delay_s: the pause before subscribing again after Redis failed.
    """

    def __init__(
        self, redis: Redis, *, patterns: tuple[str, ...] = CLIENT_PATTERNS, retry_delay_s: float = 0.5
    ) -> None:
        self._redis = redis
        self._patterns = patterns
        self._retry_delay_s = retry_delay_s
        self._waiters: dict[str, set[Signal]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscriptions = 0  # confirmed (re)subscriptions, for tests and logs

    @property
    def waiting(self) -> int:
        """How many waiters are registered."""
        return sum(map(len, self._waiters.values()))

    def start(self) -> None:
        """Start the subscriber task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="routeq-notifier")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.asynccontextmanager
    async def watch(self, channel: str, signal: Signal | None = None) -> AsyncIterator[Signal]:
        """Register a waiter for `channel` for the block (register before reading what it guards).

        `signal`: one the caller also sets itself (a worker's poll loop: its own jobs ending too).
        """
        self.start()
        signal = signal or Signal()
        self._waiters.setdefault(channel, set()).add(signal)
        try:
            yield signal
        finally:
            waiters = self._waiters.get(channel)
            if waiters is not None:
                waiters.discard(signal)
                if not waiters:
                    del self._waiters[channel]

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                logger.warning("notifications lost their Redis subscription (%s); resubscribing", exc)
            self._wake_all()  # whatever was published meanwhile is lost: everyone reads again
            await asyncio.sleep(self._retry_delay_s)

    async def _listen(self) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.psubscribe(*self._patterns)
            confirmed = 0
            while True:
                message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "psubscribe":
                    # redis-py resubscribes by itself after reconnecting: each full set of
                    # confirmations is a subscription that may have missed messages.
                    confirmed += 1
                    if confirmed % len(self._patterns) == 0:
                        self.subscriptions += 1
                        self._wake_all()
                elif message["type"] == "pmessage":
                    for signal in self._waiters.get(as_text(message["channel"]), ()):
                        signal.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for signal in waiters:
                signal.set()
