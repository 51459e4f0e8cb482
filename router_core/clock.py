"""Time as a seam: the router and the sim ask a `Clock` instead of calling `time`/`asyncio.sleep`.

Production code uses `SystemClock`; tests inject `FakeClock`, whose `sleep` advances virtual time at
once and records every wait, so a test can assert "waited at least 2 s" without spending 2 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Monotonic time in seconds, and a way to wait."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: `time.monotonic` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """Virtual time for tests: `sleep` returns at once after moving the clock forward.

    Every requested wait is kept in `sleeps`, in order.
    """

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward without a sleep being recorded."""
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        self._now += seconds
        # Yield to the loop like a real sleep would, so other tasks interleave.
        await asyncio.sleep(0)
