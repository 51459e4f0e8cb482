"""The behaviour every `StatsStore` must have, as a test class to subclass per backend.

Subclass `StatsStoreContract` and provide the `store` fixture, built on the given fake clock with
`POLICY` as its breaker policy. `InMemoryStats` and the Redis-backed `storage.fleet.state.RedisStats`
both run this suite unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest

from router_core import (
    Admission,
    BreakerPolicy,
    CallOutcome,
    CircuitState,
    Deployment,
    FakeClock,
    Forced,
    Refusal,
    StatsStore,
)
from tests.conftest import deployment

POLICY = BreakerPolicy(failure_threshold=3, window_s=10.0, min_failure_ratio=0.5, cooldown_s=10.0, probes=1)
COOLDOWN_S = POLICY.cooldown_s


def dep(**limits: Any) -> Deployment:
    return Deployment.model_validate(deployment("d", **limits))


async def call(
    store: StatsStore,
    outcome: CallOutcome = CallOutcome.SUCCESS,
    latency_ms: float = 10.0,
    *,
    d: Deployment | None = None,
    tokens: int = 10,
    used: int | None = None,
) -> Admission:
    d = d or dep()
    admission = await store.admit(d, tokens)
    assert admission.admitted, admission
    await store.release(d, admission, outcome, latency_ms, used)
    return admission


async def stats_of(store: StatsStore, deployment_id: str = "d") -> Any:
    return (await store.snapshot([deployment_id]))[deployment_id]


class StatsStoreContract:
    # -- live stats ----------------------------------------------------------------------------

    async def test_unknown_deployment_has_neutral_stats(self, store: StatsStore) -> None:
        stats = await stats_of(store, "never-called")
        assert stats.success_rate == 1.0
        assert stats.latency_ewma_ms is None
        assert stats.in_flight == 0
        assert stats.circuit is CircuitState.CLOSED
        assert stats.forced is None

    async def test_in_flight_counts_admitted_calls(self, store: StatsStore) -> None:
        first = await store.admit(dep(), 10)
        await store.admit(dep(), 10)
        assert (await stats_of(store)).in_flight == 2
        await store.release(dep(), first, CallOutcome.SUCCESS, 10.0, 12)
        stats = await stats_of(store)
        assert stats.in_flight == 1
        assert stats.calls == 1

    async def test_latency_ewma_follows_successes_only(self, store: StatsStore) -> None:
        for _ in range(3):
            await call(store, latency_ms=100.0)
        await call(store, CallOutcome.FAILURE, 5_000.0)
        stats = await stats_of(store)
        assert stats.latency_ewma_ms == pytest.approx(100.0)
        assert 0 < stats.success_rate < 1.0

    async def test_neutral_outcomes_do_not_move_health(self, store: StatsStore) -> None:
        for _ in range(POLICY.failure_threshold * 2):
            await call(store, CallOutcome.NEUTRAL)
        stats = await stats_of(store)
        assert stats.success_rate == 1.0
        assert stats.circuit is CircuitState.CLOSED

    # -- breaker -------------------------------------------------------------------------------

    async def test_breaker_opens_half_opens_and_closes(self, store: StatsStore, clock: FakeClock) -> None:
        for _ in range(POLICY.failure_threshold):
            await call(store, CallOutcome.FAILURE)
        assert (await stats_of(store)).circuit is CircuitState.OPEN
        refused = await store.admit(dep(), 10)
        assert refused.refusal is Refusal.CIRCUIT_OPEN
        assert refused.retry_after_s == pytest.approx(COOLDOWN_S)
        clock.advance(COOLDOWN_S)
        assert (await stats_of(store)).circuit is CircuitState.HALF_OPEN
        # A failed probe re-opens at once, without waiting for the threshold again.
        probe = await call(store, CallOutcome.FAILURE)
        assert probe.probe
        assert (await stats_of(store)).circuit is CircuitState.OPEN
        clock.advance(COOLDOWN_S)
        await call(store, CallOutcome.SUCCESS)
        assert (await stats_of(store)).circuit is CircuitState.CLOSED

    async def test_half_open_lets_only_the_probe_budget_through(
        self, store: StatsStore, clock: FakeClock
    ) -> None:
        for _ in range(POLICY.failure_threshold):
            await call(store, CallOutcome.FAILURE)
        clock.advance(COOLDOWN_S)
        probe = await store.admit(dep(), 10)
        assert probe.admitted
        assert probe.probe
        second = await store.admit(dep(), 10)
        assert second.refusal is Refusal.CIRCUIT_OPEN
        await store.release(dep(), probe, CallOutcome.SUCCESS, 10.0, None)
        after = await store.admit(dep(), 10)
        assert after.admitted
        assert not after.probe

    async def test_a_low_failure_ratio_keeps_it_closed(self, store: StatsStore) -> None:
        for _ in range(POLICY.failure_threshold):
            await call(store, CallOutcome.SUCCESS)
            await call(store, CallOutcome.SUCCESS)
            await call(store, CallOutcome.FAILURE)  # a third of the calls fail: below the 0.5 ratio
        assert (await stats_of(store)).circuit is CircuitState.CLOSED

    async def test_failures_outside_the_window_do_not_count(
        self, store: StatsStore, clock: FakeClock
    ) -> None:
        for _ in range(POLICY.failure_threshold - 1):
            await call(store, CallOutcome.FAILURE)
        clock.advance(POLICY.window_s + 1)
        await call(store, CallOutcome.FAILURE)
        assert (await stats_of(store)).circuit is CircuitState.CLOSED
        for _ in range(POLICY.failure_threshold - 1):
            await call(store, CallOutcome.FAILURE)
        assert (await stats_of(store)).circuit is CircuitState.OPEN

    async def test_forced_down_holds_until_cleared(self, store: StatsStore, clock: FakeClock) -> None:
        await store.force("d", Forced.DOWN)
        clock.advance(COOLDOWN_S * 10)
        stats = await stats_of(store)
        assert (stats.forced, stats.circuit) == (Forced.DOWN, CircuitState.OPEN)
        assert (await store.admit(dep(), 10)).refusal is Refusal.FORCED_DOWN
        await store.force("d", None)
        assert (await store.admit(dep(), 10)).admitted

    async def test_forced_up_ignores_the_breaker(self, store: StatsStore) -> None:
        await store.force("d", Forced.UP)
        for _ in range(POLICY.failure_threshold * 2):
            await call(store, CallOutcome.FAILURE)
        stats = await stats_of(store)
        assert (stats.forced, stats.circuit) == (Forced.UP, CircuitState.CLOSED)

    # -- limits --------------------------------------------------------------------------------

    async def test_rpm_is_a_sliding_window(self, store: StatsStore, clock: FakeClock) -> None:
        limited = dep(rpm=3, rate_window_s=1.0)
        for _ in range(3):
            await call(store, d=limited)
            clock.advance(0.25)  # admitted at t=0, 0.25, 0.5; now t=0.75
        refused = await store.admit(limited, 10)
        assert refused.refusal is Refusal.RPM
        assert refused.retry_after_s == pytest.approx(0.25)
        clock.advance(0.25)  # the first request leaves the window
        assert (await store.admit(limited, 10)).admitted
        assert (await store.admit(limited, 10)).refusal is Refusal.RPM
        assert (await stats_of(store)).requests_in_window == 3

    async def test_tpm_counts_the_estimate_then_the_real_usage(
        self, store: StatsStore, clock: FakeClock
    ) -> None:
        limited = dep(tpm=1_000, rate_window_s=1.0)
        first = await store.admit(limited, 600)
        assert (await store.admit(limited, 600)).refusal is Refusal.TPM
        await store.release(limited, first, CallOutcome.SUCCESS, 10.0, 100)  # it really used 100
        assert (await stats_of(store)).tokens_in_window == 100
        assert (await store.admit(limited, 600)).admitted
        clock.advance(1.0)
        assert (await stats_of(store)).tokens_in_window == 0

    async def test_max_concurrency_frees_on_release(self, store: StatsStore) -> None:
        limited = dep(max_concurrency=2)
        a = await store.admit(limited, 10)
        await store.admit(limited, 10)
        full = await store.admit(limited, 10)
        assert full.refusal is Refusal.CONCURRENCY
        assert full.retry_after_s is not None
        assert full.retry_after_s > 0
        await store.release(limited, a, CallOutcome.SUCCESS, 10.0, None)
        assert (await store.admit(limited, 10)).admitted

    async def test_rotation_counts_up_per_key(self, store: StatsStore) -> None:
        assert [await store.next_rotation("a") for _ in range(3)] == [0, 1, 2]
        assert await store.next_rotation("b") == 0
