"""Live deployment statistics behind one interface, so they can live in-process or in Redis.

The router reads a `snapshot` before planning (success rate, latency EWMA, in-flight count, circuit
state) and reports every call through `begin`/`end`. `InMemoryStats` is the single-process
implementation, with a simple consecutive-failure circuit breaker; a fleet-wide implementation keeps
the same interface with its state in Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import count
from typing import Protocol

from router_core.clock import Clock, SystemClock

__all__ = ["CallOutcome", "CircuitState", "DeploymentStats", "InMemoryStats", "StatsStore"]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CallOutcome(StrEnum):
    """How a call counts for health: `NEUTRAL` (429, a bad request) says nothing about health."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


@dataclass(frozen=True, slots=True)
class DeploymentStats:
    success_rate: float = 1.0
    latency_ewma_ms: float | None = None
    in_flight: int = 0
    circuit: CircuitState = CircuitState.CLOSED
    calls: int = 0


class StatsStore(Protocol):
    """Where live stats and circuit state are kept."""

    async def snapshot(self, deployment_ids: Sequence[str]) -> Mapping[str, DeploymentStats]: ...

    async def begin(self, deployment_id: str) -> None: ...

    async def end(self, deployment_id: str, outcome: CallOutcome, latency_ms: float | None) -> None: ...

    async def next_rotation(self, key: str) -> int:
        """A counter that increases by one per call, for round-robin."""
        ...


@dataclass(slots=True)
class _Entry:
    success_rate: float = 1.0
    latency_ewma_ms: float | None = None
    in_flight: int = 0
    calls: int = 0
    consecutive_failures: int = 0
    opened_at: float | None = None


class InMemoryStats:
    """Stats for one process. The breaker opens after `failure_threshold` consecutive failures,
    lets calls through again (half-open) after `cooldown_s`, and closes on the next success.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        alpha: float = 0.2,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
    ) -> None:
        self._clock = clock or SystemClock()
        self._alpha = alpha
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._entries: dict[str, _Entry] = {}
        self._rotations: dict[str, count[int]] = {}

    def _entry(self, deployment_id: str) -> _Entry:
        return self._entries.setdefault(deployment_id, _Entry())

    def _circuit(self, entry: _Entry) -> CircuitState:
        if entry.opened_at is None:
            return CircuitState.CLOSED
        if self._clock.now() - entry.opened_at >= self._cooldown_s:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    async def snapshot(self, deployment_ids: Sequence[str]) -> Mapping[str, DeploymentStats]:
        out: dict[str, DeploymentStats] = {}
        for dep in deployment_ids:
            entry = self._entries.get(dep)
            if entry is None:
                out[dep] = DeploymentStats()
                continue
            out[dep] = DeploymentStats(
                success_rate=entry.success_rate,
                latency_ewma_ms=entry.latency_ewma_ms,
                in_flight=entry.in_flight,
                circuit=self._circuit(entry),
                calls=entry.calls,
            )
        return out

    async def begin(self, deployment_id: str) -> None:
        self._entry(deployment_id).in_flight += 1

    async def end(self, deployment_id: str, outcome: CallOutcome, latency_ms: float | None) -> None:
        entry = self._entry(deployment_id)
        entry.in_flight = max(0, entry.in_flight - 1)
        entry.calls += 1
        if outcome is CallOutcome.NEUTRAL:
            return
        ok = outcome is CallOutcome.SUCCESS
        entry.success_rate += self._alpha * ((1.0 if ok else 0.0) - entry.success_rate)
        if ok:
            if latency_ms is not None:
                prev = entry.latency_ewma_ms
                entry.latency_ewma_ms = (
                    latency_ms if prev is None else prev + self._alpha * (latency_ms - prev)
                )
            entry.consecutive_failures = 0
            entry.opened_at = None
            return
        entry.consecutive_failures += 1
        half_open = self._circuit(entry) is CircuitState.HALF_OPEN
        if half_open or entry.consecutive_failures >= self._threshold:
            entry.opened_at = self._clock.now()

    async def next_rotation(self, key: str) -> int:
        return next(self._rotations.setdefault(key, count()))
