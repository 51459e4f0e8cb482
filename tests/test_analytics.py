"""Routing analytics (`storage.sql.analytics`) on a small known data set, on SQLite and on PostgreSQL.

Times come from an injected clock so rows land on known UTC days, close to midnight. PostgreSQL
sessions run in Asia/Tokyo (UTC+9): a day computed in the session's time zone would come out wrong.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from router_core import Strategy
from router_core.models import Attempt, AttemptOutcome, ChatRequest, CompletionResult, Message, Usage
from storage.jobs import ANY_TENANT, FailureCode, InDoubtCall, JobFailure, NewJob, StartedJob
from storage.sql.analytics import (
    Analytics,
    DailyModelStats,
    DeploymentUsage,
    EndUserUsage,
    Latency,
    analytics,
)
from storage.sql.engine import connect_database, migrate
from storage.sql.store import Store
from tests.backends import DATABASE_ENV, TRUNCATE_ALL, service_url

DAY1 = datetime(2025, 3, 1, 23, 30, tzinfo=UTC)
DAY2 = datetime(2025, 3, 2, 0, 30, tzinfo=UTC)
DAY3 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
START = datetime(2025, 3, 1, tzinfo=UTC)
MIDNIGHT2 = datetime(2025, 3, 2, tzinfo=UTC)
MIDNIGHT3 = datetime(2025, 3, 3, tzinfo=UTC)
A, B = "acme", "globex"


class Clock:
    """The store's `now`: set by the test before each write."""

    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at


def call(
    deployment: str, latency: float, tokens: tuple[int, int] | None = None, cost: float = 0.0
) -> Attempt:
    """A provider call: a success when it reports tokens, an error (no usage, not billed) otherwise."""
    ok = tokens is not None
    return Attempt(
        deployment=deployment,
        provider=deployment,
        model=f"m-{deployment}",
        outcome=AttemptOutcome.SUCCESS if ok else AttemptOutcome.ERROR,
        status_code=None if ok else 500,
        latency_ms=latency,
        usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1]) if tokens else None,
        cost_usd=cost,
    )


@dataclass
class Recorder:
    """Writes jobs through the Store API at the clock's time."""

    store: Store
    clock: Clock

    async def start(self, tenant: str, at: datetime, end_user: str | None = None) -> StartedJob:
        self.clock.at = at
        created = await self.store.batches.create(
            [NewJob("item", chat(end_user))], tenant=tenant, user_id="u"
        )
        started = await self.store.runs.start(created.job_ids[0], run=1, worker="w")
        assert isinstance(started, StartedJob)
        return started

    async def succeed(
        self, tenant: str, at: datetime, latency: float, *calls: Attempt, end_user: str | None = None
    ) -> None:
        job = await self.start(tenant, at, end_user)
        last = calls[-1]
        assert last.usage is not None
        result = CompletionResult(
            content="hi",
            deployment=last.deployment,
            provider=last.provider,
            model=last.model,
            usage=last.usage,
            cost_usd=sum(c.cost_usd for c in calls),
            latency_ms=latency,
            simulated=True,
            attempts=list(calls),
            plan_strategy=Strategy.BALANCED,
        )
        assert await self.store.runs.finish(job, run=1, attempts_made=calls, result=result)

    async def fail(self, tenant: str, at: datetime, *calls: Attempt, end_user: str | None = None) -> None:
        job = await self.start(tenant, at, end_user)
        failure = JobFailure(FailureCode.ALL_ATTEMPTS_FAILED, "every call failed")
        assert await self.store.runs.finish(job, run=1, attempts_made=calls, result=None, failure=failure)

    async def cancel(self, tenant: str, at: datetime, end_user: str | None = None) -> None:
        self.clock.at = at
        created = await self.store.batches.create(
            [NewJob("item", chat(end_user))], tenant=tenant, user_id="u"
        )
        assert len(await self.store.batches.cancel(created.batch_id, tenant=ANY_TENANT)) == 1

    async def lose_worker(
        self, tenant: str, at: datetime, deployment: str, held: float, end_user: str | None = None
    ) -> None:
        """A run that died mid-call: its call is recorded in doubt and charged at the amount held."""
        job = await self.start(tenant, at, end_user)
        lost = InDoubtCall(1, 1, deployment, deployment, f"m-{deployment}", held, simulated=True)
        await self.store.runs.record_in_doubt(job, [lost])


def chat(end_user: str | None = None) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content="hello")], user=end_user)


async def _open_store(name: str) -> tuple[Store, Clock]:
    clock = Clock()
    if name == "embedded":
        return Store(await connect_database("sqlite+aiosqlite://"), now=clock), clock
    engine = create_async_engine(
        service_url(DATABASE_ENV), connect_args={"server_settings": {"TimeZone": "Asia/Tokyo"}}
    )
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(TRUNCATE_ALL)
    return Store(engine, now=clock), clock


@pytest.fixture(params=["embedded", "services"])
async def recorder(request: pytest.FixtureRequest) -> AsyncIterator[Recorder]:
    store, clock = await _open_store(request.param)
    try:
        yield Recorder(store, clock)
    finally:
        await store.close()


@pytest.fixture
async def world(recorder: Recorder) -> Store:
    """Two tenants over three UTC days; acme's numbers are worked out by hand in the tests. The
    requests of end users carol and dave name them (`user`); the others name nobody."""
    r = recorder
    await r.succeed(A, DAY1, 100, call("alpha", 100, (10, 20), 0.5), end_user="carol")
    await r.succeed(A, DAY1, 250, call("alpha", 50), call("beta", 200, (30, 40), 0.25), end_user="carol")
    await r.fail(A, DAY1, call("alpha", 40), call("alpha", 60), end_user="dave")  # retried in place
    await r.succeed(A, DAY2, 300, call("beta", 300, (5, 5), 0.125))
    await r.succeed(A, DAY2, 400, call("alpha", 400, (1, 2), 1.0), end_user="dave")
    await r.cancel(A, DAY2, end_user="carol")
    await r.lose_worker(A, DAY2, "gamma", held=2.0, end_user="carol")  # running: a call, a charge
    await r.succeed(A, DAY3, 5, call("alpha", 5, (1, 1), 16.0), end_user="dave")
    await r.succeed(B, DAY1, 1000, call("alpha", 1000, (100, 100), 8.0), end_user="carol")
    await r.fail(B, DAY2, call("beta", 70))
    return r.store


async def test_totals_of_one_tenant(world: Store) -> None:
    got = (await analytics(world, tenant=A, since=START, until=MIDNIGHT3)).totals
    assert (got.requests, got.successes, got.failures, got.cancelled) == (6, 4, 1, 1)
    assert got.failovers == 1
    assert got.provider_calls == 8
    assert (got.input_tokens, got.output_tokens) == (46, 67)
    assert got.cost_usd == Decimal("3.875")
    assert got.estimated_cost_usd == Decimal("2")
    # Succeeded jobs' latencies 100, 250, 300, 400: nearest rank ceil(q * 4).
    assert got.latency_ms == Latency(p50=250, p90=400, p95=400, p99=400)


async def test_admin_sees_every_tenant(world: Store) -> None:
    got = (await analytics(world, tenant=None, since=START, until=MIDNIGHT3)).totals
    assert (got.requests, got.successes, got.failures, got.cancelled) == (8, 5, 2, 1)
    assert got.provider_calls == 10
    assert got.cost_usd == Decimal("11.875")
    assert got.latency_ms == Latency(p50=300, p90=1000, p95=1000, p99=1000)  # 100 250 300 400 1000


async def test_a_tenant_never_sees_another_tenants_rows(world: Store) -> None:
    got = await analytics(world, tenant=B, since=START, until=MIDNIGHT3)
    assert (got.totals.requests, got.totals.successes, got.totals.failures) == (2, 1, 1)
    assert (got.totals.provider_calls, got.totals.cost_usd) == (2, Decimal(8))
    assert got.totals.latency_ms == Latency(1000, 1000, 1000, 1000)
    assert [(d.deployment, d.calls, d.errors, d.cost_usd) for d in got.deployments] == [
        ("alpha", 1, 0, Decimal(8)),
        ("beta", 1, 1, Decimal(0)),
    ]
    assert [(d.date, d.model, d.calls) for d in got.daily] == [
        (date(2025, 3, 1), "m-alpha", 1),
        (date(2025, 3, 2), "m-beta", 1),
    ]
    nobody = await analytics(world, tenant="nobody", since=START, until=MIDNIGHT3)
    assert (nobody.totals.requests, nobody.totals.provider_calls, nobody.totals.cost_usd) == (
        0,
        0,
        Decimal(0),
    )
    assert nobody.totals.latency_ms == Latency(None, None, None, None)
    assert (nobody.deployments, nobody.daily) == ((), ())


async def test_per_deployment(world: Store) -> None:
    got = (await analytics(world, tenant=A, since=START, until=MIDNIGHT3)).deployments
    assert got == (
        DeploymentUsage(
            deployment="alpha",
            calls=5,
            successes=2,
            errors=3,
            error_rate=0.6,
            failovers_away=1,  # the failover to beta; a retry on alpha itself is not one
            input_tokens=11,
            output_tokens=22,
            cost_usd=Decimal("1.5"),
            p50_latency_ms=100,
            p95_latency_ms=400,
        ),
        DeploymentUsage("beta", 2, 2, 0, 0.0, 0, 35, 45, Decimal("0.375"), 200, 300),
        DeploymentUsage("gamma", 1, 0, 1, 1.0, 0, 0, 0, Decimal(2), None, None),  # in doubt
    )


async def test_daily_rollups_per_model_use_utc_days(world: Store) -> None:
    got = (await analytics(world, tenant=A, since=START, until=MIDNIGHT3)).daily
    day1, day2 = date(2025, 3, 1), date(2025, 3, 2)
    assert got == (
        DailyModelStats(day1, "m-alpha", 4, 1, 3, 10, 20, Decimal("0.5")),
        DailyModelStats(day1, "m-beta", 1, 1, 0, 30, 40, Decimal("0.25")),
        DailyModelStats(day2, "m-alpha", 1, 1, 0, 1, 2, Decimal(1)),
        DailyModelStats(day2, "m-beta", 1, 1, 0, 5, 5, Decimal("0.125")),
        DailyModelStats(day2, "m-gamma", 1, 0, 1, 0, 0, Decimal(2)),
    )


async def test_per_end_user(world: Store) -> None:
    got = await analytics(world, tenant=A, since=START, until=MIDNIGHT3, by_end_user=True)
    assert got.end_users == (
        # carol: two successes and a cancel; four calls (the in-doubt one of a job still running).
        EndUserUsage(A, "carol", 3, 2, 0, 1, 4, 40, 60, Decimal("2.75")),
        EndUserUsage(A, "dave", 2, 1, 1, 0, 3, 1, 2, Decimal(1)),  # DAY3's job is past the window
        EndUserUsage(A, None, 1, 1, 0, 0, 1, 5, 5, Decimal("0.125")),  # named no end user
    )
    totals = got.totals
    assert got.end_users is not None
    assert sum(u.cost_usd for u in got.end_users) == totals.cost_usd
    assert sum(u.requests for u in got.end_users) == totals.requests
    assert sum(u.provider_calls for u in got.end_users) == totals.provider_calls
    assert (await analytics(world, tenant=A, since=START, until=MIDNIGHT3)).end_users is None  # not asked

    everyone = await analytics(world, tenant=None, since=START, until=MIDNIGHT3, by_end_user=True)
    assert everyone.end_users is not None
    assert [(u.tenant, u.user, u.cost_usd) for u in everyone.end_users] == [
        (B, "carol", Decimal(8)),  # globex's carol is not acme's
        (A, "carol", Decimal("2.75")),
        (A, "dave", Decimal(1)),
        (A, None, Decimal("0.125")),
        (B, None, Decimal(0)),
    ]
    top = await analytics(
        world, tenant=None, since=START, until=MIDNIGHT3, by_end_user=True, end_user_limit=2
    )
    assert [(u.tenant, u.user) for u in top.end_users or ()] == [(B, "carol"), (A, "carol")]
    theirs = await analytics(world, tenant=B, since=START, until=MIDNIGHT3, by_end_user=True)
    assert [(u.user, u.requests) for u in theirs.end_users or ()] == [("carol", 1), (None, 1)]
    plain = json.loads(json.dumps(got.to_dict()))
    assert plain["end_users"][0] == {
        "tenant": A,
        "user": "carol",
        "requests": 3,
        "successes": 2,
        "failures": 0,
        "cancelled": 1,
        "provider_calls": 4,
        "input_tokens": 40,
        "output_tokens": 60,
        "cost_usd": 2.75,
    }


async def test_window_is_half_open_and_bounds_may_be_in_any_time_zone(world: Store) -> None:
    paris = timezone(timedelta(hours=1))
    since = datetime(2025, 3, 2, 1, 0, tzinfo=paris)  # midnight UTC
    got = await analytics(world, tenant=A, since=since, until=MIDNIGHT3)
    assert got.since == MIDNIGHT2
    assert (got.totals.requests, got.totals.successes, got.totals.cancelled) == (3, 2, 1)
    assert got.totals.provider_calls == 3
    assert (got.totals.cost_usd, got.totals.estimated_cost_usd) == (Decimal("3.125"), Decimal(2))
    assert {d.date for d in got.daily} == {date(2025, 3, 2)}

    later = await analytics(world, tenant=A, since=MIDNIGHT3, until=MIDNIGHT3 + timedelta(days=1))
    assert (later.totals.requests, later.totals.cost_usd) == (1, Decimal(16))
    at_the_bound = await analytics(world, tenant=A, since=DAY3 - timedelta(hours=1), until=DAY3)
    assert at_the_bound.totals.requests == 0  # until is excluded
    naive = await analytics(world, tenant=A, since=DAY3.replace(tzinfo=None), until=DAY3 + timedelta(1))
    assert naive.totals.requests == 1  # naive bounds are UTC


async def test_percentiles_are_nearest_rank(recorder: Recorder) -> None:
    latencies = [10.0 * i for i in range(1, 21)]
    random.Random(3).shuffle(latencies)
    for ms in latencies:
        await recorder.succeed(A, DAY1, ms, call("alpha", ms, (1, 1), 0.5))
    await recorder.succeed(A, DAY1, 1.0, call("beta", 1.0, (1, 1), 0.5))  # a partition of its own
    got = await analytics(recorder.store, tenant=A, since=START, until=MIDNIGHT3)
    # n = 21 jobs: ranks ceil(10.5)=11, ceil(18.9)=19, ceil(19.95)=20, ceil(20.79)=21.
    assert got.totals.latency_ms == Latency(p50=100, p90=180, p95=190, p99=200)
    alpha = got.deployments[0]
    # n = 20 calls: ranks exactly 10 and 19 (no rounding up of a whole rank).
    assert (alpha.deployment, alpha.p50_latency_ms, alpha.p95_latency_ms) == ("alpha", 100, 190)
    assert (got.deployments[1].p50_latency_ms, got.deployments[1].p95_latency_ms) == (1.0, 1.0)


async def test_to_dict_is_plain_json(world: Store) -> None:
    got: Analytics = await analytics(world, tenant=A, since=START, until=MIDNIGHT3)
    plain = json.loads(json.dumps(got.to_dict()))
    assert plain["tenant"] == A
    assert plain["since"] == "2025-03-01T00:00:00+00:00"
    assert plain["totals"]["cost_usd"] == 3.875
    assert plain["totals"]["latency_ms"] == {"p50": 250.0, "p90": 400.0, "p95": 400.0, "p99": 400.0}
    assert plain["deployments"][2] == {
        "deployment": "gamma",
        "calls": 1,
        "successes": 0,
        "errors": 1,
        "error_rate": 1.0,
        "failovers_away": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 2.0,
        "p50_latency_ms": None,
        "p95_latency_ms": None,
    }
    assert plain["daily"][0] == {
        "date": "2025-03-01",
        "model": "m-alpha",
        "calls": 4,
        "successes": 1,
        "errors": 3,
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_usd": 0.5,
    }
