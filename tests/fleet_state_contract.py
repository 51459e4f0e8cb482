"""The behaviour every `FleetState` must have, as a test class to subclass per backend.

Subclass `FleetStateContract` and provide the `fleet` fixture, built on the given fake clock with
`POLICY` as its breaker policy, and `untrusting`, the same with `trust_processing_time=False`.
`InMemoryFleetState` and the Redis-backed `storage.fleet.state.RedisFleetState` both run this suite
unchanged.
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
    FleetState,
    Forced,
    Refusal,
    SpendHold,
)
from router_core.spend import SpendRefusal
from tests.conftest import deployment

POLICY = BreakerPolicy(failure_threshold=3, window_s=10.0, min_failure_ratio=0.5, cooldown_s=10.0, probes=1)
COOLDOWN_S = POLICY.cooldown_s


def dep(**limits: Any) -> Deployment:
    return Deployment.model_validate(deployment("d", **limits))


async def call(
    fleet: FleetState,
    outcome: CallOutcome = CallOutcome.SUCCESS,
    latency_ms: float = 10.0,
    *,
    d: Deployment | None = None,
    tokens: int = 10,
    used: int | None = None,
) -> Admission:
    d = d or dep()
    admission = await fleet.admit(d, tokens)
    assert admission.admitted, admission
    await fleet.release(d, admission, outcome, latency_ms, used)
    return admission


class Purse:
    """A `SpendGuard` holding up to `room` dollars, in memory: what it holds, attempt by attempt."""

    def __init__(self, room: float) -> None:
        self.room = room
        self.held: dict[int, float] = {}

    async def reserve(self, attempt_no: int, deployment_id: str, amount_usd: float) -> SpendRefusal | None:
        if attempt_no not in self.held and sum(self.held.values()) + amount_usd > self.room:
            return SpendRefusal(f"purse: no room for ${amount_usd} on {deployment_id}", wait=True)
        self.held.setdefault(attempt_no, amount_usd)
        return None

    async def release(self, attempt_no: int) -> None:
        self.held.pop(attempt_no, None)


async def snapshot_of(fleet: FleetState, deployment_id: str = "d") -> Any:
    return (await fleet.snapshot([deployment_id]))[deployment_id]


class FleetStateContract:
    # -- live stats ----------------------------------------------------------------------------

    async def test_unknown_deployment_has_neutral_stats(self, fleet: FleetState) -> None:
        stats = await snapshot_of(fleet, "never-called")
        assert stats.success_rate == 1.0
        assert stats.latency_ewma_ms is None
        assert stats.in_flight == 0
        assert stats.circuit is CircuitState.CLOSED
        assert stats.forced is None

    async def test_in_flight_counts_admitted_calls(self, fleet: FleetState) -> None:
        first = await fleet.admit(dep(), 10)
        await fleet.admit(dep(), 10)
        assert (await snapshot_of(fleet)).in_flight == 2
        await fleet.release(dep(), first, CallOutcome.SUCCESS, 10.0, 12)
        stats = await snapshot_of(fleet)
        assert stats.in_flight == 1
        assert stats.calls == 1

    async def test_latency_ewma_follows_successes_only(self, fleet: FleetState) -> None:
        for _ in range(3):
            await call(fleet, latency_ms=100.0)
        await call(fleet, CallOutcome.FAILURE, 5_000.0)
        stats = await snapshot_of(fleet)
        assert stats.latency_ewma_ms == pytest.approx(100.0)
        assert 0 < stats.success_rate < 1.0

    async def test_neutral_outcomes_do_not_move_health(self, fleet: FleetState) -> None:
        for _ in range(POLICY.failure_threshold * 2):
            await call(fleet, CallOutcome.NEUTRAL)
        stats = await snapshot_of(fleet)
        assert stats.success_rate == 1.0
        assert stats.circuit is CircuitState.CLOSED

    # -- breaker -------------------------------------------------------------------------------

    async def test_breaker_opens_half_opens_and_closes(self, fleet: FleetState, clock: FakeClock) -> None:
        for _ in range(POLICY.failure_threshold):
            await call(fleet, CallOutcome.FAILURE)
        assert (await snapshot_of(fleet)).circuit is CircuitState.OPEN
        refused = await fleet.admit(dep(), 10)
        assert refused.refusal is Refusal.CIRCUIT_OPEN
        assert refused.retry_after_s == pytest.approx(COOLDOWN_S)
        clock.advance(COOLDOWN_S)
        assert (await snapshot_of(fleet)).circuit is CircuitState.HALF_OPEN
        # A failed probe re-opens at once, without waiting for the threshold again.
        probe = await call(fleet, CallOutcome.FAILURE)
        assert probe.probe
        assert (await snapshot_of(fleet)).circuit is CircuitState.OPEN
        clock.advance(COOLDOWN_S)
        await call(fleet, CallOutcome.SUCCESS)
        assert (await snapshot_of(fleet)).circuit is CircuitState.CLOSED

    async def test_half_open_lets_only_the_probe_budget_through(
        self, fleet: FleetState, clock: FakeClock
    ) -> None:
        for _ in range(POLICY.failure_threshold):
            await call(fleet, CallOutcome.FAILURE)
        clock.advance(COOLDOWN_S)
        probe = await fleet.admit(dep(), 10)
        assert probe.admitted
        assert probe.probe
        second = await fleet.admit(dep(), 10)
        assert second.refusal is Refusal.CIRCUIT_OPEN
        await fleet.release(dep(), probe, CallOutcome.SUCCESS, 10.0, None)
        after = await fleet.admit(dep(), 10)
        assert after.admitted
        assert not after.probe

    async def test_a_low_failure_ratio_keeps_it_closed(self, fleet: FleetState) -> None:
        for _ in range(POLICY.failure_threshold):
            await call(fleet, CallOutcome.SUCCESS)
            await call(fleet, CallOutcome.SUCCESS)
            await call(fleet, CallOutcome.FAILURE)  # a third of the calls fail: below the 0.5 ratio
        assert (await snapshot_of(fleet)).circuit is CircuitState.CLOSED

    async def test_failures_outside_the_window_do_not_count(
        self, fleet: FleetState, clock: FakeClock
    ) -> None:
        for _ in range(POLICY.failure_threshold - 1):
            await call(fleet, CallOutcome.FAILURE)
        clock.advance(POLICY.window_s + 1)
        await call(fleet, CallOutcome.FAILURE)
        assert (await snapshot_of(fleet)).circuit is CircuitState.CLOSED
        for _ in range(POLICY.failure_threshold - 1):
            await call(fleet, CallOutcome.FAILURE)
        assert (await snapshot_of(fleet)).circuit is CircuitState.OPEN

    async def test_forced_down_holds_until_cleared(self, fleet: FleetState, clock: FakeClock) -> None:
        await fleet.force("d", Forced.DOWN)
        clock.advance(COOLDOWN_S * 10)
        stats = await snapshot_of(fleet)
        assert (stats.forced, stats.circuit) == (Forced.DOWN, CircuitState.OPEN)
        assert (await fleet.admit(dep(), 10)).refusal is Refusal.FORCED_DOWN
        await fleet.force("d", None)
        assert (await fleet.admit(dep(), 10)).admitted

    async def test_forced_up_ignores_the_breaker(self, fleet: FleetState) -> None:
        await fleet.force("d", Forced.UP)
        for _ in range(POLICY.failure_threshold * 2):
            await call(fleet, CallOutcome.FAILURE)
        stats = await snapshot_of(fleet)
        assert (stats.forced, stats.circuit) == (Forced.UP, CircuitState.CLOSED)

    # -- limits --------------------------------------------------------------------------------

    async def test_rpm_is_a_sliding_window(self, fleet: FleetState, clock: FakeClock) -> None:
        limited = dep(rpm=3, rate_window_s=1.0)
        for _ in range(3):
            await call(fleet, d=limited)
            clock.advance(0.25)  # admitted at t=0, 0.25, 0.5; now t=0.75
        refused = await fleet.admit(limited, 10)
        assert refused.refusal is Refusal.RPM
        assert refused.retry_after_s == pytest.approx(0.25)
        clock.advance(0.25)  # the first request leaves the window
        assert (await fleet.admit(limited, 10)).admitted
        assert (await fleet.admit(limited, 10)).refusal is Refusal.RPM
        assert (await snapshot_of(fleet)).requests_in_window == 3

    async def test_tpm_counts_the_estimate_then_the_real_usage(
        self, fleet: FleetState, clock: FakeClock
    ) -> None:
        limited = dep(tpm=1_000, rate_window_s=1.0)
        first = await fleet.admit(limited, 600)
        assert (await fleet.admit(limited, 600)).refusal is Refusal.TPM
        await fleet.release(limited, first, CallOutcome.SUCCESS, 10.0, 100)  # it really used 100
        assert (await snapshot_of(fleet)).tokens_in_window == 100
        second = await fleet.admit(limited, 600)
        assert second.admitted
        clock.advance(1.0)  # the first ended a window ago; the second is still in flight
        assert (await snapshot_of(fleet)).tokens_in_window == 600
        await fleet.release(limited, second, CallOutcome.SUCCESS, 10.0, None)
        clock.advance(1.0)
        assert (await snapshot_of(fleet)).tokens_in_window == 0

    async def test_a_call_counts_until_a_window_after_its_release(
        self, fleet: FleetState, clock: FakeClock
    ) -> None:
        """A provider counts a call when it arrives, anywhere between admission and release: a call
        admitted long ago but still in flight may only now reach it, so it still takes its place."""
        limited = dep(rpm=1, rate_window_s=1.0)
        slow = await fleet.admit(limited, 10)
        clock.advance(5.0)
        refused = await fleet.admit(limited, 10)
        assert refused.refusal is Refusal.RPM
        assert refused.retry_after_s == pytest.approx(1.0)  # at least a window after it ends
        await fleet.release(limited, slow, CallOutcome.SUCCESS, 10.0, None)
        clock.advance(0.99)
        assert (await fleet.admit(limited, 10)).refusal is Refusal.RPM
        clock.advance(0.01)
        assert (await fleet.admit(limited, 10)).admitted

    async def test_a_call_slower_than_the_margin_counts_until_a_window_after_its_start_plus_it(
        self, fleet: FleetState, clock: FakeClock
    ) -> None:
        """The provider counted it no later than its start plus the arrival margin (1 s by default),
        whenever its answer came: its slot does not wait for a window after the answer."""
        limited = dep(rpm=1, rate_window_s=1.0)
        slow = await fleet.admit(limited, 10)
        clock.advance(1.5)
        await fleet.release(limited, slow, CallOutcome.SUCCESS, 1500.0, None)
        clock.advance(0.49)  # 1.99 s after its start: it may have arrived 0.99 s ago
        assert (await fleet.admit(limited, 10)).refusal is Refusal.RPM
        clock.advance(0.01)
        assert (await fleet.admit(limited, 10)).admitted

    async def test_an_unanswered_call_counts_until_a_window_after_its_start_plus_the_margin(
        self, fleet: FleetState, clock: FakeClock
    ) -> None:
        """A call given up on (a timeout) may still reach the provider after it ended here."""
        limited = dep(rpm=1, rate_window_s=1.0)
        lost = await fleet.admit(limited, 10)
        clock.advance(0.2)
        await fleet.release(limited, lost, CallOutcome.NEUTRAL, 200.0, None, answered=False)
        clock.advance(1.79)  # a window after its start plus the margin is 2.0 s after its start
        assert (await fleet.admit(limited, 10)).refusal is Refusal.RPM
        clock.advance(0.01)
        assert (await fleet.admit(limited, 10)).admitted

    async def test_an_answered_call_counts_until_a_window_after_its_answer_less_the_providers_hold(
        self, fleet: FleetState, clock: FakeClock
    ) -> None:
        """A provider that held the call 0.2 s after counting it (`server_s`) counted it at least
        0.2 s before its answer reached us: its slot frees a window after that, not after the answer."""
        limited = dep(rpm=1, rate_window_s=1.0)
        held = await fleet.admit(limited, 10)
        clock.advance(0.3)
        await fleet.release(limited, held, CallOutcome.SUCCESS, 300.0, None, server_s=0.2)
        clock.advance(0.79)  # 1.09 s after its admission: it may have arrived 0.99 s ago
        assert (await fleet.admit(limited, 10)).refusal is Refusal.RPM
        clock.advance(0.01)
        assert (await fleet.admit(limited, 10)).admitted

    async def test_a_hold_longer_than_the_call_frees_its_slot_no_sooner_than_a_window_after_its_start(
        self, fleet: FleetState, clock: FakeClock
    ) -> None:
        """The call was sent at its start (0.2 s after its admission here): whatever the provider
        says, it did not arrive before that."""
        limited = dep(rpm=1, rate_window_s=1.0)
        held = await fleet.admit(limited, 10)
        clock.advance(0.5)  # started at 0.2, answered at 0.5, the provider claims a 9 s hold
        await fleet.release(limited, held, CallOutcome.SUCCESS, 300.0, None, server_s=9.0)
        clock.advance(0.69)
        assert (await fleet.admit(limited, 10)).refusal is Refusal.RPM
        clock.advance(0.01)
        assert (await fleet.admit(limited, 10)).admitted

    async def test_a_reported_hold_bounds_a_slow_call_past_the_margin(
        self, fleet: FleetState, clock: FakeClock
    ) -> None:
        """A call answered 3 s after its start, 50 ms of it held by the provider, may have reached
        the provider 2.95 s after its start (a starved worker, a slow network), later than the
        margin: the reported hold bounds it, the margin does not."""
        limited = dep(rpm=1, rate_window_s=1.0)
        slow = await fleet.admit(limited, 10)
        clock.advance(3.0)
        await fleet.release(limited, slow, CallOutcome.SUCCESS, 3000.0, None, server_s=0.05)
        clock.advance(0.94)
        assert (await fleet.admit(limited, 10)).refusal is Refusal.RPM
        clock.advance(0.01)
        assert (await fleet.admit(limited, 10)).admitted

    async def test_an_untrusting_state_counts_an_answered_call_until_a_window_after_its_answer(
        self, untrusting: FleetState, clock: FakeClock
    ) -> None:
        """`ROUTEQ_TRUST_PROCESSING_TIME=false`: the provider's reported hold is not believed."""
        limited = dep(rpm=1, rate_window_s=1.0)
        held = await untrusting.admit(limited, 10)
        clock.advance(0.3)
        await untrusting.release(limited, held, CallOutcome.SUCCESS, 300.0, None, server_s=0.2)
        clock.advance(0.99)
        assert (await untrusting.admit(limited, 10)).refusal is Refusal.RPM
        clock.advance(0.01)
        assert (await untrusting.admit(limited, 10)).admitted

    async def test_an_unanswered_call_ignores_a_hold(self, fleet: FleetState, clock: FakeClock) -> None:
        limited = dep(rpm=1, rate_window_s=1.0)
        lost = await fleet.admit(limited, 10)
        clock.advance(0.2)
        await fleet.release(limited, lost, CallOutcome.NEUTRAL, 200.0, None, answered=False, server_s=0.2)
        clock.advance(1.79)  # still a window after its start plus the margin
        assert (await fleet.admit(limited, 10)).refusal is Refusal.RPM
        clock.advance(0.01)
        assert (await fleet.admit(limited, 10)).admitted

    async def test_max_concurrency_frees_on_release(self, fleet: FleetState) -> None:
        limited = dep(max_concurrency=2)
        a = await fleet.admit(limited, 10)
        await fleet.admit(limited, 10)
        full = await fleet.admit(limited, 10)
        assert full.refusal is Refusal.CONCURRENCY
        assert full.retry_after_s is not None
        assert full.retry_after_s > 0
        await fleet.release(limited, a, CallOutcome.SUCCESS, 10.0, None)
        assert (await fleet.admit(limited, 10)).admitted

    # -- a call's budget hold ------------------------------------------------------------------

    async def test_a_hold_is_taken_with_the_admission_and_only_with_it(self, fleet: FleetState) -> None:
        """Admitted: the hold is taken. Refused by a limit: no hold is left. Refused by the budget:
        no slot is taken, and the answer says why."""
        limited, purse = dep(max_concurrency=1), Purse(room=1.0)
        first = await fleet.admit(limited, 10, hold=SpendHold(purse, 1, "d", 0.75))
        assert first.admitted
        assert first.spend_refusal is None
        assert purse.held == {1: 0.75}

        full = await fleet.admit(limited, 10, hold=SpendHold(purse, 2, "d", 0.1))
        assert full.refusal is Refusal.CONCURRENCY
        assert purse.held == {1: 0.75}  # the refused call holds nothing

        await fleet.release(limited, first, CallOutcome.SUCCESS, 10.0, None)
        broke = await fleet.admit(limited, 10, hold=SpendHold(purse, 3, "d", 0.5))
        assert not broke.admitted
        assert broke.spend_refusal == "purse: no room for $0.5 on d"
        assert broke.describe("d") == "d: purse: no room for $0.5 on d"
        assert (await snapshot_of(fleet)).in_flight == 0  # the slot was not taken
        assert (await fleet.admit(limited, 10, hold=SpendHold(purse, 4, "d", 0.25))).admitted
        assert purse.held == {1: 0.75, 4: 0.25}

    async def test_a_hold_given_back_is_released_with_the_slot(self, fleet: FleetState) -> None:
        """A call not billed ends with `give_back`: its slot and its hold both go."""
        limited, purse = dep(max_concurrency=1), Purse(room=1.0)
        hold = SpendHold(purse, 1, "d", 0.75)
        first = await fleet.admit(limited, 10, hold=hold)
        await fleet.release(limited, first, CallOutcome.FAILURE, 10.0, None, give_back=hold)
        assert purse.held == {}
        assert (await snapshot_of(fleet)).in_flight == 0
        billed = SpendHold(purse, 2, "d", 0.75)
        second = await fleet.admit(limited, 10, hold=billed)
        await fleet.release(limited, second, CallOutcome.SUCCESS, 10.0, 12)  # billed: the hold stays
        assert purse.held == {2: 0.75}

    async def test_rotation_counts_up_per_key(self, fleet: FleetState) -> None:
        assert [await fleet.next_rotation("a") for _ in range(3)] == [0, 1, 2]
        assert await fleet.next_rotation("b") == 0
