"""A call's admission and its budget hold in one script (`RedisFleetState.admit(..., hold=)` with a
`JobSpendGuard`): both are taken or neither, in one round trip, with the refusal a `reserve` gives;
and a call not billed gives both back in one (`release(..., give_back=)`).

Every test runs on fakeredis (with Lua) and on a real Redis (ROUTEQ_TEST_REDIS_URL).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from router_core import CallOutcome, Refusal, SpendHold
from router_core.spend import SpendRefusal
from storage import keys
from storage.fleet.budgets import Budgets, JobSpendGuard
from storage.fleet.state import RedisFleetState
from tests.fleet_state_contract import dep, snapshot_of
from tests.test_budgets import ALICE, budgets, connect, redis, usages
from workers.semantic import ShiftedGuard

__all__ = ["connect", "redis"]  # the fixtures, shared with tests/test_budgets.py

LIMITED = dep(max_concurrency=1)


def guard(b: Budgets, job_id: str, *, run: int = 1) -> JobSpendGuard:
    """The job's guard, its own `reserve` and `release` unused: a hold taken with an admission, or
    given back with a slot, is the fleet script's."""
    made = b.guard(job_id=job_id, run=run, tenant="acme", user="alice", batch_id="b1")

    async def no_second_round_trip(*args: Any) -> SpendRefusal | None:
        raise AssertionError("the hold was reserved or released on its own, not with the slot")

    made.reserve = no_second_round_trip  # type: ignore[method-assign,assignment]
    made.release = no_second_round_trip  # type: ignore[method-assign,assignment]
    return made


async def test_an_admitted_call_takes_its_hold_and_a_refused_one_takes_neither(redis: Redis) -> None:
    b, fleet = budgets(redis), RedisFleetState(redis)  # the user's default cap: $1
    first = await fleet.admit(LIMITED, 10, hold=SpendHold(guard(b, "job_a"), 1, "d", 0.25))
    assert first.admitted
    assert set(await b.holds("job_a")) == {"1:1"}
    assert await usages(b, ALICE) == [(0.0, 0.25)]

    # max_concurrency 1, taken: refused for the limit, and no hold is written (none to give back).
    full = await fleet.admit(LIMITED, 10, hold=SpendHold(guard(b, "job_b"), 1, "d", 0.25))
    assert full.refusal is Refusal.CONCURRENCY
    assert await b.holds("job_b") == {}
    assert await redis.zscore(keys.OPEN_HOLDS, "job_b") is None
    assert await usages(b, ALICE) == [(0.0, 0.25)]

    # No room in the budget: refused for it, as `reserve` says it, and the slot is not taken.
    await fleet.release(LIMITED, first, CallOutcome.SUCCESS, 10.0, None)
    broke = await fleet.admit(LIMITED, 10, hold=SpendHold(guard(b, "job_c"), 1, "d", 0.8))
    assert not broke.admitted
    assert broke.refusal is None
    reserving = b.guard(job_id="job_c", run=1, tenant="acme", user="alice", batch_id="b1")
    said = await reserving.reserve(1, "d", 0.8)
    assert said is not None
    assert said.wait  # only the held $0.25 stands in the way
    assert broke.spend_refusal == said
    assert broke.spend_refusal.wait
    assert (await snapshot_of(fleet)).in_flight == 0
    assert await usages(b, ALICE) == [(0.0, 0.25)]


async def test_a_hold_already_taken_stands_and_is_not_counted_twice(redis: Redis) -> None:
    """A re-run's attempt whose hold a dead run left: admitted without a second hold."""
    b, fleet = budgets(redis), RedisFleetState(redis)
    await b.guard(job_id="job_a", run=2, tenant="acme", user="alice", batch_id="b1").reserve(3, "d", 0.5)
    admitted = await fleet.admit(LIMITED, 10, hold=SpendHold(guard(b, "job_a", run=2), 3, "d", 0.9))
    assert admitted.admitted
    assert [hold.amount_usd for hold in (await b.holds("job_a")).values()] == [0.5]
    assert await usages(b, ALICE) == [(0.0, 0.5)]


async def test_a_shifted_guard_holds_its_attempts_shifted_in_the_same_script(redis: Redis) -> None:
    """The semantic cache's guard (attempt n is n + 1, after the embedding call) takes the fused path."""
    b, fleet = budgets(redis), RedisFleetState(redis)
    shifted = ShiftedGuard(guard(b, "job_a"), 1)
    assert (await fleet.admit(LIMITED, 10, hold=SpendHold(shifted, 1, "d", 0.1))).admitted
    assert set(await b.holds("job_a")) == {"1:2"}


async def test_a_call_not_billed_gives_back_its_slot_and_its_hold_in_one_script(redis: Redis) -> None:
    b, fleet = budgets(redis), RedisFleetState(redis)
    unbilled, billed = SpendHold(guard(b, "job_a"), 1, "d", 0.25), SpendHold(guard(b, "job_a"), 2, "d", 0.5)
    first = await fleet.admit(LIMITED, 10, hold=unbilled)
    await fleet.release(LIMITED, first, CallOutcome.FAILURE, 10.0, None, give_back=unbilled)
    assert await b.holds("job_a") == {}
    assert await redis.zscore(keys.OPEN_HOLDS, "job_a") is None  # the job holds nothing any more
    assert await usages(b, ALICE) == [(0.0, 0.0)]
    assert (await snapshot_of(fleet)).in_flight == 0

    second = await fleet.admit(LIMITED, 10, hold=billed)
    await fleet.release(LIMITED, second, CallOutcome.SUCCESS, 10.0, 12)  # billed: settled after its commit
    assert set(await b.holds("job_a")) == {"1:2"}
    # A hold already gone (released twice, a retried release) is skipped.
    await fleet.release(LIMITED, second, CallOutcome.FAILURE, 10.0, None, give_back=unbilled)
    assert await usages(b, ALICE) == [(0.0, 0.5)]
