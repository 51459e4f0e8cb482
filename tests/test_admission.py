"""Admission before a job's SQL start: the fleet's waiting line, claims, turns and deferrals.

A job whose payload carries its request asks the line (storage/fleet/line.py) before it touches SQL:
refused, it is re-queued at its turn with no SQL write and its arq try given back; at its turn it
is admitted and runs. Time is a `FakeClock` shared by the fleet state, the line and the sim.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio import Redis
from sqlalchemy import select

from producer.client import Client
from router_core import FakeClock, Router, RouterSettings, SimulateMode
from router_core.catalog import Deployment
from router_core.fleet import CallOutcome, Refusal
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


async def test_turns_count_a_call_until_its_answer_less_the_providers_hold(
    redis: Redis, clock: FakeClock
) -> None:
    """A provider that says it held each 50 ms call 40 ms: a slot leaves the window a window after
    the answer less 40 ms, and a cycle is the window and the other 10 ms; a call in flight is
    expected to stop counting 10 ms from now."""
    dep = limited("a-1", rpm=2)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock, margin_s=0.0, hop_s=0.0)
    admission = await fleet.admit(dep, 10)
    clock.advance(0.05)
    await fleet.release(dep, admission, CallOutcome.SUCCESS, 50.0, 10, server_s=0.04)  # from 1000.01
    in_flight = await fleet.admit(dep, 10)
    assert in_flight.admitted
    now = clock.now()
    place = [Place(dep, 10)]
    turns = [await line.turn(f"job-{n}", place, check_room=True) for n in range(3)]
    assert turns[0].delay_s == pytest.approx(1000.01 + WINDOW_S - now)
    assert turns[1].delay_s == pytest.approx(0.01 + WINDOW_S)
    assert turns[2].delay_s == pytest.approx(turns[0].delay_s + WINDOW_S + 0.01)


async def test_a_slot_freeing_within_the_lead_is_room_for_one_job_admitted_once_it_frees(
    redis: Redis, clock: FakeClock
) -> None:
    """A job finds room up to `hop_s` (the lead) before its slot frees, so its way to admission (SQL
    start, cache lookup, budget hold) overlaps the wait; it is told when the slot frees, and the
    fleet would refuse it sooner. The claim keeps the slot from a second job."""
    dep = limited("a-1", rpm=1)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock, margin_s=0.0, hop_s=0.05)
    await admit_and_release(fleet, dep, clock)  # counted until a window after 1000.05
    clock.advance(WINDOW_S - 0.03)  # the slot frees in 0.03 s
    place = [Place(dep, 10)]
    first = await line.turn("job-1", place, check_room=True)
    assert first.room
    assert first.ready_s == pytest.approx(0.03)
    assert not (await line.turn("job-2", place, check_room=True)).room
    assert (await fleet.admit(dep, 10, waiter="job-1")).refusal is Refusal.RPM
    clock.advance(first.ready_s)
    assert (await fleet.admit(dep, 10, waiter="job-1")).admitted


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


async def test_a_new_job_leaves_the_slot_of_a_job_whose_turn_came(redis: Redis, clock: FakeClock) -> None:
    dep = limited("a-1", rpm=1)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock, margin_s=0.0)
    place = [Place(dep, 10)]
    await admit_and_release(fleet, dep, clock)
    waited = await line.turn("waited", place, check_room=True)
    clock.advance(waited.delay_s)  # the slot is free; "waited" is on its way back to ask
    newcomer = await line.turn("new", place, check_room=True)
    assert not newcomer.room
    assert (await line.turn("waited", place, check_room=True)).room


async def test_a_job_that_misses_its_turn_stays_behind_the_jobs_promised_the_next_slots(
    redis: Redis, clock: FakeClock
) -> None:
    dep = limited("a-1", rpm=2)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock, margin_s=0.0, hop_s=0.0)
    place = [Place(dep, 10)]
    await admit_and_release(fleet, dep, clock)
    clock.advance(0.2)
    await admit_and_release(fleet, dep, clock)
    first = await line.turn("job-0", place, check_room=True)
    second = await line.turn("job-1", place, check_room=True)
    clock.advance(first.delay_s)
    await admit_and_release(fleet, dep, clock)  # a call the line did not see takes job-0's slot
    again = await line.turn("job-0", place, check_room=True)
    assert not again.room
    # The next slot to free was promised to job-1: job-0 gets the one after, not the same moment
    # (jobs tied on one slot would each wake, one take it, the rest ask again a moment later).
    assert clock.now() + again.delay_s > (clock.now() - first.delay_s) + second.delay_s + 0.5


async def test_a_near_turn_is_waited_for_in_the_worker(redis: Redis, clock: FakeClock) -> None:
    near_dep, far_dep = limited("a-1", rpm=1), limited("b-2", rpm=1)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock)
    await admit_and_release(fleet, near_dep, clock)
    await admit_and_release(fleet, far_dep, clock)
    # Both turns are about a window away: too far for "far" (0.5 s), near enough for "near".
    far = await line.wait_for_room("far", [Place(far_dep, 10)], 0.5, clock)
    assert (far.room, clock.sleeps) == (False, [])
    near = await line.wait_for_room("near", [Place(near_dep, 10)], 5.0, clock)
    assert near.room
    # Its call was released 0.05 s before the other's, which ended just now: its slot frees a
    # window after it, and its turn comes a hop (0.05 s) before that, to find room then ...
    assert clock.sleeps == [pytest.approx(WINDOW_S - 0.05 - 0.05 + 0.005)]
    # ... and be admitted once it frees (the runner waits `ready_s`).
    assert near.ready_s == pytest.approx(0.05)
    assert await redis.hget(keys.deployment("b-2"), "waits") == b"1"  # type: ignore[misc]
    assert await redis.hget(keys.deployment("a-1"), "holds") == b"1"  # type: ignore[misc]


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


@dataclass
class _OneSlot:
    """A runner on a fake clock, with one deployment of one call per window, and two queued jobs."""

    runner: JobRunner
    router: Router
    world: SimWorld
    first: str
    second: str


async def one_slot(backend: Backend, clock: FakeClock, *, admission_wait_s: float = 0.0) -> _OneSlot:
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
        admission_wait_s=admission_wait_s,
    )
    return _OneSlot(runner, router, world, first, second)


async def test_a_job_refused_admission_writes_no_sql_and_runs_at_its_turn(backend: Backend) -> None:
    clock = FakeClock(start=0.0)
    redis = await backend.redis()
    slot = await one_slot(backend, clock)
    runner, first, second = slot.runner, slot.first, slot.second
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
        # Its turn: when the first call's slot leaves the window (a window after its answer).
        assert refused.value.delay_s == pytest.approx(WINDOW_S + 0.005, abs=0.06)
        clock.advance(refused.value.delay_s)
        assert await runner.run(second, run=1, carried=refused.value.carry) == "succeeded"
    finally:
        await slot.router.aclose()
    job = await backend.store.jobs.get(second, tenant=ANY_TENANT)
    assert (job.starts, job.run) == (1, 1)
    outcomes = slot.world.stats["lim-a"].by_outcome
    assert outcomes.get("rpm_limited", 0) == 0
    assert outcomes["ok"] == 2


async def test_a_job_whose_turn_is_near_waits_in_the_worker_and_runs_in_one_delivery(
    backend: Backend,
) -> None:
    clock = FakeClock(start=0.0)
    redis = await backend.redis()
    slot = await one_slot(backend, clock, admission_wait_s=5.0)
    try:
        for job_id in (slot.first, slot.second):
            assert await slot.runner.run(job_id, run=1, carried=await carried(redis, job_id)) == "succeeded"
    finally:
        await slot.router.aclose()
    assert pytest.approx(WINDOW_S + 0.005, abs=0.06) in clock.sleeps  # held to its turn
    job = await backend.store.jobs.get(slot.second, tenant=ANY_TENANT)
    assert (job.starts, job.run) == (1, 1)
    outcomes = slot.world.stats["lim-a"].by_outcome
    assert (outcomes.get("rpm_limited", 0), outcomes["ok"]) == (0, 2)


async def test_a_line_of_held_jobs_fills_the_limits_asking_about_twice_each(
    redis: Redis, clock: FakeClock
) -> None:
    """The saturation bench in miniature, on virtual time: 50 jobs held in workers at a time, each
    woken at its turn, admitted a random hop later, answered a random latency after that. Every
    job asks a few times at most (no herd of jobs re-asking for one slot), and the deployments run
    at their limits: the batch takes about N / (sum of limits) plus a cycle."""
    rng = random.Random(7)
    fleet = RedisFleetState(redis, clock=clock)
    line = AdmissionLine(redis, clock=clock)
    deps = [limited(f"d{n}", rpm=rpm) for n, rpm in enumerate((20, 15, 10))]
    places = [Place(d, 10) for d in deps]
    jobs, start, held = 135, clock.now(), 50
    events: list[tuple[float, int, str, str, Any]] = []
    order = itertools.count()
    asks: Counter[str] = Counter()
    admitted_at: dict[str, list[float]] = {d.id: [] for d in deps}

    def push(delay: float, kind: str, job: str, data: Any = None) -> None:
        heapq.heappush(events, (clock.now() + delay, next(order), kind, job, data))

    for n in range(held):
        push(0.0, "ask", f"j{n}")
    queued = iter(range(held, jobs))
    while events:
        at, _, kind, job, data = heapq.heappop(events)
        clock.advance(at - clock.now())
        if kind == "ask":
            asks[job] += 1
            turn = await line.turn(job, places, check_room=True, hold_s=10.0)
            dep = next(d for d in deps if d.id == turn.deployment)
            if turn.room:  # admitted a hop later, and no sooner than its slot frees (the runner waits)
                push(max(rng.uniform(0.005, 0.04), turn.ready_s), "admit", job, dep)
            else:
                push(turn.delay_s, "ask", job)
        elif kind == "admit":
            admission = await fleet.admit(data, 10, waiter=job)
            assert admission.admitted, admission
            admitted_at[data.id].append(clock.now())
            push(rng.uniform(0.05, 0.08), "release", job, (data, admission))
        else:
            dep, admission = data
            await fleet.release(dep, admission, CallOutcome.SUCCESS, 65.0, 10)
            if (following := next(queued, None)) is not None:
                push(0.0, "ask", f"j{following}")
    assert len(asks) == jobs
    assert max(asks.values()) <= 6
    assert sum(asks.values()) / jobs <= 2.5
    for dep in deps:  # as the fleet counts them: never more than rpm within a window
        times = admitted_at[dep.id]
        assert all(b - a >= WINDOW_S for a, b in zip(times, times[dep.rpm :], strict=False))
    ideal = jobs / sum(d.rpm or 0 for d in deps)
    assert clock.now() - start <= ideal * 1.1
