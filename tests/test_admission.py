"""Admission before a job's SQL start: the fleet's waiting line, claims, turns and deferrals.

A job whose payload carries its request asks the line (storage/fleet/line.py) before it touches SQL:
refused, it is re-queued at its turn with no SQL write and its arq try given back; at its turn it
is admitted and runs. Time is a `FakeClock` shared by the fleet state, the line and the sim.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio import Redis
from sqlalchemy import select

from producer.client import Client
from router_core import FakeClock, Router, RouterSettings, SimulateMode
from router_core.catalog import Deployment
from router_core.fleet import CallOutcome
from router_core.models import ChatRequest, Message
from router_core.providers.factory import sim_profile
from router_core.sim.world import SimWorld
from storage import keys
from storage.bus.events import EventBus
from storage.bus.queue import Deferrals, deserialize
from storage.fleet.budgets import Budgets
from storage.fleet.line import AdmissionLine, Place
from storage.fleet.state import RedisFleetState
from storage.jobs import ANY_TENANT, JobStatus
from storage.sql.schema import attempts
from tests.backends import Backend
from tests.conftest import deployment, make_catalog
from workers.runner import JobDeferred, JobRunner

WINDOW_S = 1.0


def limited(id: str, rpm: int, **extra: Any) -> Deployment:
    return Deployment.model_validate(deployment(id, rpm=rpm, rate_window_s=WINDOW_S, latency_ms=50, **extra))


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    conn = FakeAsyncRedis(server=FakeServer())
    yield conn
    await conn.aclose()


async def admit_and_release(
    fleet: RedisFleetState, dep: Deployment, clock: FakeClock, waiter: str = ""
) -> None:
    admission = await fleet.admit(dep, 10, waiter=waiter or None)
    assert admission.admitted, admission
    clock.advance(0.05)
    await fleet.release(dep, admission, CallOutcome.SUCCESS, 50.0, 10)


# -- the line ---------------------------------------------------------------------------------------


async def test_room_is_claimed_until_the_admission_takes_the_claim_out(
    redis: Redis, clock: FakeClock
) -> None:
    dep = limited("a-1", rpm=1)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock)
    first = await line.turn("job-1", [Place(dep, 10)], check_room=True)
    assert (first.room, first.deployment) == (True, "a-1")
    # job-1 is on its way to admission: its claim holds the one slot against job-2.
    second = await line.turn("job-2", [Place(dep, 10)], check_room=True)
    assert not second.room
    assert await redis.zscore(keys.deployment_claims("a-1"), "job-1") is not None
    await admit_and_release(fleet, dep, clock, waiter="job-1")
    assert await redis.zcard(keys.deployment_claims("a-1")) == 0
    assert await redis.hget(keys.deployment("a-1"), "waits") == b"1"  # type: ignore[misc]


async def test_turns_follow_the_slots_as_they_leave_the_window(redis: Redis, clock: FakeClock) -> None:
    dep = limited("a-1", rpm=2)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock, margin_s=0.0, hop_s=0.0)
    await admit_and_release(fleet, dep, clock)  # released at 1000.05
    clock.advance(0.2)
    await admit_and_release(fleet, dep, clock)  # released at 1000.30
    now = clock.now()
    place = [Place(dep, 10)]
    turns = [await line.turn(f"job-{n}", place, check_room=True) for n in range(3)]
    assert not any(t.room for t in turns)
    # The first waiter gets the first slot to leave, the second the next; the third comes a whole
    # cycle (window + latency) after the first, when the slot the first one takes frees again.
    assert turns[0].delay_s == pytest.approx(1000.05 + WINDOW_S - now)
    assert turns[1].delay_s == pytest.approx(1000.30 + WINDOW_S - now)
    assert turns[2].delay_s == pytest.approx(turns[0].delay_s + WINDOW_S + 0.05)
    # Asking again leaves the line: job-0 at its turn finds the slot free.
    clock.advance(turns[0].delay_s)
    assert (await line.turn("job-0", place, check_room=True)).room


async def test_a_job_waits_on_the_candidate_that_frees_first(redis: Redis, clock: FakeClock) -> None:
    slow, fast = limited("slow-a", rpm=1), limited("fast-b", rpm=1)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock, margin_s=0.0)
    await admit_and_release(fleet, fast, clock)
    clock.advance(0.5)
    await admit_and_release(fleet, slow, clock)
    turn = await line.turn("job-1", [Place(slow, 10), Place(fast, 10)], check_room=True)
    assert (turn.room, turn.deployment) == (False, "fast-b")
    assert await redis.zscore(keys.deployment_waiting("fast-b"), "job-1") is not None
    assert await redis.zscore(keys.deployment_waiting("slow-a"), "job-1") is None


async def test_a_job_that_never_comes_back_leaves_the_line_after_stale_s(
    redis: Redis, clock: FakeClock
) -> None:
    dep = limited("a-1", rpm=1)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock, stale_s=2.0)
    await admit_and_release(fleet, dep, clock)
    gone = await line.turn("gone", [Place(dep, 10)], check_room=True)
    clock.advance(gone.delay_s + 2.5)
    await line.turn("other", [Place(dep, 10)], check_room=True)
    assert await redis.zscore(keys.deployment_waiting("a-1"), "gone") is None


# -- re-queuing at the turn -------------------------------------------------------------------------


async def test_a_deferral_sets_the_run_time_and_gives_the_try_back_only_if_it_is_ours(redis: Redis) -> None:
    queue = "q"
    await redis.set(keys.ARQ_JOB_PREFIX + "j1", b"old")
    await redis.zadd(queue, {"j1": 1})
    await redis.set(keys.ARQ_RETRY_PREFIX + "j1", 3)
    deferrals = Deferrals(redis, queue)
    payload = Deferrals.payload(
        "j1", {"request": "{}", "tenant": "t", "batch_id": "b"}, job_try=3, enqueued_ms=5
    )
    await deferrals.defer("j1", run_at_ms=123_456, payload=payload, give_back_try=3)
    assert await redis.zscore(queue, "j1") == 123_456
    assert await redis.get(keys.ARQ_RETRY_PREFIX + "j1") == b"2"  # the next delivery is try 3 again
    assert deserialize(await redis.get(keys.ARQ_JOB_PREFIX + "j1"))["k"]["carried"]["tenant"] == "t"
    # A duplicate delivery counted a try since: the counter is not ours to give back.
    await redis.set(keys.ARQ_RETRY_PREFIX + "j1", 5)
    await deferrals.defer("j1", run_at_ms=200_000, payload=None, give_back_try=3)
    assert await redis.get(keys.ARQ_RETRY_PREFIX + "j1") == b"5"
    # A job cancelled meanwhile (no queue entry, no payload) is not brought back.
    await redis.delete(keys.ARQ_JOB_PREFIX + "j2")
    await deferrals.defer("j2", run_at_ms=1, payload=payload, give_back_try=None)
    assert await redis.zscore(queue, "j2") is None
    assert await redis.exists(keys.ARQ_JOB_PREFIX + "j2") == 0


# -- a job refused admission ------------------------------------------------------------------------


async def carried(redis: Redis, job_id: str) -> dict[str, Any]:
    """What the job's arq payload carries, as the worker receives it."""
    payload = deserialize(await redis.get(keys.ARQ_JOB_PREFIX + job_id))
    value: dict[str, Any] = payload["k"]["carried"]
    return value


async def test_a_job_refused_admission_writes_no_sql_and_runs_at_its_turn(backend: Backend) -> None:
    clock = FakeClock(start=0.0)
    redis = await backend.redis()
    dep = deployment(
        "lim-a", rpm=1, rate_window_s=WINDOW_S, latency_ms=50, sim={"rpm": 1, "window_s": WINDOW_S}
    )
    catalog = make_catalog([dep])
    # The sim counts on the same clock and refuses a second call within its window: a 429 would show.
    world = SimWorld({d.id: sim_profile(d) for d in catalog.values()}, clock=clock)
    fleet = RedisFleetState(redis, clock=clock)
    router = Router.from_settings(
        RouterSettings(simulate=SimulateMode.ALWAYS),
        catalog=catalog,
        clock=clock,
        fleet=fleet,
        sim_world=world,
    )
    settings = backend.settings.model_copy(update={"default_user_budget_usd": 100.0})
    client = Client(redis, backend.store, settings)
    first = await client.submit(ChatRequest(messages=[Message(role="user", content="one")]))
    second = await client.submit(ChatRequest(messages=[Message(role="user", content="two")]))
    runner = JobRunner(
        router,
        backend.store,
        EventBus(redis, retention_s=60),
        worker_id="w1",
        budgets=Budgets(redis, default_user_cap_usd=100.0),
        line=AdmissionLine(redis, clock=clock),
    )
    try:
        assert await runner.run(first, run=1, carried=await carried(redis, first)) == "succeeded"
        with pytest.raises(JobDeferred) as refused:
            await runner.run(second, run=1, carried=await carried(redis, second))
        assert refused.value.given_back  # not a run: the next delivery is try 1 again
        # No SQL write: still queued, never started, no attempt recorded.
        job = await backend.store.jobs.get(second, tenant=ANY_TENANT)
        assert (job.status, job.starts, job.run, job.started_at) == (JobStatus.QUEUED, 0, 0, None)
        async with backend.store.engine.connect() as conn:
            rows = (await conn.execute(select(attempts.c.job_id).where(attempts.c.job_id == second))).all()
        assert rows == []
        # Its turn: when the first call's slot leaves the window (released + window + margin).
        assert refused.value.delay_s == pytest.approx(WINDOW_S + 0.05 + 0.005, abs=0.06)
        clock.advance(refused.value.delay_s)
        assert await runner.run(second, run=1, carried=refused.value.carry) == "succeeded"
    finally:
        await router.aclose()
    job = await backend.store.jobs.get(second, tenant=ANY_TENANT)
    assert (job.starts, job.run) == (1, 1)
    outcomes = world.stats["lim-a"].by_outcome
    assert outcomes.get("rpm_limited", 0) == 0
    assert outcomes["ok"] == 2
