"""The fleet's learned quality: evidence written to SQL, its tallies shared through Redis.

Every worker's planner asks `FleetQuality.board()` for each plan; the answer is kept in the process
for `refresh_s` (5 s), then read again from Redis (`routeq:quality:tallies:<version>`), and only the
first reader after new evidence reads the `quality_tallies` table. Writers (`record`,
`add_feedback`) commit the evidence, then bump `routeq:quality:version`: every process sees new
evidence within `refresh_s`, and a reader racing a writer caches an old version's key that nobody
reads again (see `storage.keys`). Without Redis (a CLI with no ROUTEQ_REDIS_URL) it reads SQL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from router_core.models import Capability, Complexity
from router_core.quality import QualityBoard, Tally
from storage import keys
from storage.settings import Settings
from storage.sql.quality import Feedback, ScoredAnswer
from storage.sql.store import Store

__all__ = ["FleetQuality"]


class FleetQuality:
    """`router_core.quality.QualitySource` for the fleet, and the way evidence is added to it."""

    def __init__(
        self,
        redis: Redis | None,
        store: Store,
        *,
        strength: float,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._store = store
        self.strength = strength
        self.refresh_s = refresh_s
        self._clock = clock
        self._board: QualityBoard | None = None
        self._until = 0.0
        self._reading: asyncio.Future[QualityBoard] | None = None

    @classmethod
    def from_settings(cls, redis: Redis | None, store: Store, settings: Settings) -> FleetQuality:
        """With the prior strength and refresh interval the settings give."""
        return cls(
            redis, store, strength=settings.quality_prior_strength, refresh_s=settings.quality_refresh_s
        )

    async def board(self) -> QualityBoard:
        """The current board; concurrent plans share one read when it is due."""
        if self._board is not None and self._clock() < self._until:
            return self._board
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        reading = self._reading
        try:
            board = await asyncio.shield(reading)  # one cancelled plan does not cancel the read
        finally:
            if self._reading is reading and reading.done():
                self._reading = None
        return board

    async def _read(self) -> QualityBoard:
        redis = self._redis
        if redis is None:
            tallies = await self._store.quality.tallies()
        else:
            version = int(await redis.get(keys.QUALITY_VERSION) or 0)
            key = keys.quality_tallies(version)
            raw = await redis.get(key)
            if raw is not None:
                tallies = _decode(raw)
            else:
                tallies = await self._store.quality.tallies()
                await redis.set(key, _encode(tallies), ex=keys.QUALITY_TALLIES_TTL_S)
        self._board = QualityBoard(tallies, strength=self.strength)
        self._until = self._clock() + self.refresh_s
        return self._board

    async def record(self, answers: Sequence[ScoredAnswer]) -> int:
        """Add scored answers (each once); the fleet plans with them within `refresh_s`."""
        added = await self._store.quality.record(answers)
        if added:
            await self._changed()
        return added

    async def add_feedback(self, **fields: Any) -> Feedback:
        """`store.quality.add_feedback`, then the fleet is told the tallies changed."""
        made = await self._store.quality.add_feedback(**fields)
        await self._changed()
        return made

    async def _changed(self) -> None:
        if self._redis is not None:
            await self._redis.incr(keys.QUALITY_VERSION)
        self._until = 0.0  # this process reads the new tallies at its next plan


def _encode(tallies: Sequence[Tally]) -> str:
    return json.dumps([[t.deployment, t.capability, t.complexity, t.samples, t.total] for t in tallies])


def _decode(raw: bytes | str) -> list[Tally]:
    rows = json.loads(raw)
    return [Tally(d, Capability(cap), Complexity(cx), int(n), float(s)) for d, cap, cx, n, s in rows]
