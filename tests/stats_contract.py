"""The behaviour every `StatsStore` must have, as a test class to subclass per backend.

Subclass `StatsStoreContract` and provide the `store` fixture (built on the given fake clock, with
failure_threshold=3 and cooldown_s=10); the Redis-backed store reuses this suite unchanged.
"""

from __future__ import annotations

import pytest

from router_core import CallOutcome, CircuitState, FakeClock, StatsStore

THRESHOLD = 3
COOLDOWN_S = 10.0


class StatsStoreContract:
    async def test_unknown_deployment_has_neutral_stats(self, store: StatsStore) -> None:
        stats = (await store.snapshot(["never-called"]))["never-called"]
        assert stats.success_rate == 1.0
        assert stats.latency_ewma_ms is None
        assert stats.in_flight == 0
        assert stats.circuit is CircuitState.CLOSED

    async def test_in_flight_counts_begun_calls(self, store: StatsStore) -> None:
        await store.begin("d")
        await store.begin("d")
        assert (await store.snapshot(["d"]))["d"].in_flight == 2
        await store.end("d", CallOutcome.SUCCESS, 10.0)
        assert (await store.snapshot(["d"]))["d"].in_flight == 1

    async def test_latency_ewma_follows_successes_only(self, store: StatsStore) -> None:
        for latency in (100.0, 100.0, 100.0):
            await store.begin("d")
            await store.end("d", CallOutcome.SUCCESS, latency)
        await store.begin("d")
        await store.end("d", CallOutcome.FAILURE, 5_000.0)
        stats = (await store.snapshot(["d"]))["d"]
        assert stats.latency_ewma_ms == pytest.approx(100.0)
        assert 0 < stats.success_rate < 1.0

    async def test_neutral_outcomes_do_not_move_health(self, store: StatsStore) -> None:
        for _ in range(THRESHOLD * 2):
            await store.begin("d")
            await store.end("d", CallOutcome.NEUTRAL, 1.0)
        stats = (await store.snapshot(["d"]))["d"]
        assert stats.success_rate == 1.0
        assert stats.circuit is CircuitState.CLOSED

    async def test_breaker_opens_half_opens_and_closes(self, store: StatsStore, clock: FakeClock) -> None:
        for _ in range(THRESHOLD):
            await store.begin("d")
            await store.end("d", CallOutcome.FAILURE, 1.0)
        assert (await store.snapshot(["d"]))["d"].circuit is CircuitState.OPEN
        clock.advance(COOLDOWN_S)
        assert (await store.snapshot(["d"]))["d"].circuit is CircuitState.HALF_OPEN
        # A failed probe re-opens at once, without waiting for the threshold again.
        await store.begin("d")
        await store.end("d", CallOutcome.FAILURE, 1.0)
        assert (await store.snapshot(["d"]))["d"].circuit is CircuitState.OPEN
        clock.advance(COOLDOWN_S)
        await store.begin("d")
        await store.end("d", CallOutcome.SUCCESS, 1.0)
        assert (await store.snapshot(["d"]))["d"].circuit is CircuitState.CLOSED

    async def test_failures_below_threshold_keep_it_closed(self, store: StatsStore) -> None:
        for outcome in [CallOutcome.FAILURE] * (THRESHOLD - 1) + [CallOutcome.SUCCESS]:
            await store.begin("d")
            await store.end("d", outcome, 1.0)
        await store.begin("d")
        await store.end("d", CallOutcome.FAILURE, 1.0)
        assert (await store.snapshot(["d"]))["d"].circuit is CircuitState.CLOSED

    async def test_rotation_counts_up_per_key(self, store: StatsStore) -> None:
        assert [await store.next_rotation("a") for _ in range(3)] == [0, 1, 2]
        assert await store.next_rotation("b") == 0
