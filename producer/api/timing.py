"""Where a chat answer's time went, as a `Server-Timing` header (W3C Server Timing).

Every answer to a chat completion or a message (`/v1/messages`), streamed or not, says how long
each step of the API's own path took, in milliseconds:

    server-timing: auth;dur=0.41, admit;dur=0.08, store;dur=2.95, enqueue;dur=0.88,
                   job;dur=31.20, read;dur=2.10, route;dur=0.35

- `auth`: the API key checked (its version read from Redis; SQL when it changed);
- `admit`: the body parsed and validated, the rate limits taken;
- `store`: the job recorded in SQL (a batch of one);
- `enqueue`: the job queued in Redis;
- `job`: queued until its completion was announced: a worker's pick-up, routing, the provider
  calls and the worker's commit (a streamed answer has `first` instead: until its first piece);
- `read`: the finished job read back from SQL;
- `route`: the router's walk as the worker timed it, from planning to the answer: admission, each
  call, retries and failovers (part of `job`; the rest of `job` is the queue and the worker's
  bookkeeping).

What a client measures past their sum is the HTTP hop and the server's event loop. Browsers'
developer tools show the header; `bench/api.py` prints the medians of each step from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SERVER_TIMING", "Stages"]

SERVER_TIMING = "server-timing"


class Stages:
    """A request's steps, timed one after the other: each `lap` ends the step begun at the last one
    (or when the request was taken up)."""

    __slots__ = ("_clock", "_laps", "_last")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._last = clock()
        self._laps: list[tuple[str, float]] = []

    def now(self) -> float:
        """The clock's reading, for a lap that ends at a moment already past (`lap(at=)`)."""
        return self._clock()

    def lap(self, name: str, *, at: float | None = None) -> None:
        """End the step `name` now, or `at` an earlier reading of `now` (its time: since the last lap)."""
        end = self._clock() if at is None else at
        self._laps.append((name, end - self._last))
        self._last = end

    def add(self, name: str, seconds: float) -> None:
        """A step timed elsewhere (it is not taken from the clock's laps)."""
        self._laps.append((name, seconds))

    def header(self) -> dict[str, str]:
        """The `Server-Timing` header of the steps so far (durations in milliseconds)."""
        return {SERVER_TIMING: ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in self._laps)}
