"""Budget periods: daily, weekly and monthly caps that start again from zero at local midnight.

The boundaries are computed in a configured zone (`router_core.periods`); the counters of each period
are their own Redis keys, so a new period starts from nothing with no reset job. Every Redis test
runs on fakeredis and on a real Redis (ROUTEQ_TEST_REDIS_URL); the monthly reset through a worker
runs on both pipeline backends.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fakeredis import FakeAsyncRedis
from pydantic import ValidationError
from redis.asyncio import Redis
from rich.console import Console
from typer.testing import CliRunner

from producer.cli import admin, app
from producer.client import Client
from router_core.models import ChatRequest, Message
from router_core.periods import (
    RESETTING,
    BudgetPeriod,
    load_zone,
    period_bounds,
    period_label,
    period_starts,
)
from router_core.providers import sim_world_for
from storage import keys
from storage.fleet.budgets import Budgets, ScopeUsage, tenant_scope, user_scope
from storage.jobs import FailureCode, JobStatus, NewJob
from storage.settings import Settings
from storage.sql.spend import spend_per_period
from storage.sql.store import Store
from tests.backends import REDIS_ENV, open_backend, service_url, store_beside
from tests.conftest import deployment, make_catalog
from tests.test_budgets import charge, new_jobs

NY = ZoneInfo("America/New_York")
DAILY, WEEKLY, MONTHLY = BudgetPeriod.DAILY, BudgetPeriod.WEEKLY, BudgetPeriod.MONTHLY
ALICE = user_scope("acme", "alice")
runner = CliRunner()


def epoch(text: str, zone: tzinfo = NY) -> float:
    """`2026-01-31 23:30` in `zone`, as epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def local(text: str, zone: tzinfo = NY) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


# -- boundaries ----------------------------------------------------------------------------------


def test_periods_start_at_local_midnight_weeks_on_monday() -> None:
    at = epoch("2026-01-31 23:30")  # a Saturday night in New York: already Sunday 04:30 in UTC
    assert period_bounds(DAILY, at, NY) == (local("2026-01-31"), local("2026-02-01"))
    assert period_bounds(WEEKLY, at, NY) == (local("2026-01-26"), local("2026-02-02"))  # Mondays
    assert period_bounds(MONTHLY, at, NY) == (local("2026-01-01"), local("2026-02-01"))
    assert period_bounds(DAILY, at, UTC) == (local("2026-02-01", UTC), local("2026-02-02", UTC))
    assert period_bounds(MONTHLY, at, UTC)[0] == local("2026-02-01", UTC)
    # A month in New York starts at 05:00 UTC; December rolls into the next year.
    start, end = period_bounds(MONTHLY, epoch("2026-12-31 23:59:59"), NY)
    assert (start, end) == (local("2026-12-01"), local("2027-01-01"))
    assert end.astimezone(UTC) == local("2027-01-01 05:00", UTC)
    # Daylight saving: the day clocks go forward has 23 hours, and the boundaries stay at midnight.
    start, end = period_bounds(DAILY, epoch("2026-03-08 12:00"), NY)
    assert (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds() == 23 * 3600
    assert period_label(start) == "2026-03-08"
    assert period_starts(WEEKLY, local("2026-01-01"), local("2026-01-20"), NY) == [
        local("2025-12-29"),
        local("2026-01-05"),
        local("2026-01-12"),
        local("2026-01-19"),
    ]


def test_budgets_keep_a_days_periods_and_give_period_bounds_at_every_instant() -> None:
    """`Budgets.periods_at` keeps the periods of the day last asked: the same as `period_bounds` at
    every instant, across midnights, a Monday, a month's end and daylight saving, in any order."""
    budgets = Budgets(FakeAsyncRedis(), zone=NY)
    start = epoch("2026-02-27 21:00")  # a Friday evening, near February's end
    instants = [start + step * 1_800 for step in range(24 * 4 * 2)]  # 4 days, every half hour
    instants += [epoch("2026-03-08 01:59"), epoch("2026-03-08 03:00"), epoch("2026-03-09 00:00")]
    instants += [start + 1, epoch("2026-03-01 00:00") - 0.001, epoch("2026-03-01 00:00")]  # back again
    for at in instants:
        periods = budgets.periods_at(at)
        bounds = [period_bounds(period, at, NY) for period in (DAILY, WEEKLY, MONTHLY)]
        assert periods.bounds == bounds
        assert periods.ends_s == [end.timestamp() for _, end in bounds]
        labels = [f"{p.value}:{period_label(start)}" for p, (start, _) in zip(RESETTING, bounds, strict=True)]
        assert periods.suffixes == [f":{label}" for label in labels]


def test_bad_periods_and_zones_are_named() -> None:
    assert BudgetPeriod.parse("Monthly") is MONTHLY
    with pytest.raises(ValueError, match="unknown budget period 'yearly'; use one of: lifetime, daily"):
        BudgetPeriod.parse("yearly")
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base': use an IANA name"):
        load_zone("Mars/Base")
    with pytest.raises(ValidationError, match=r"budget_timezone\n.*unknown time zone 'EST5'"):
        Settings(_env_file=None, budget_timezone="EST5")
    assert Settings(_env_file=None, budget_timezone="Europe/Paris").budget_zone() == ZoneInfo("Europe/Paris")
    assert Settings(_env_file=None).budget_timezone == "UTC"


# -- counters in Redis ---------------------------------------------------------------------------


@pytest.fixture(params=["fakeredis", "redis"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    client = Redis.from_url(service_url(REDIS_ENV)) if request.param == "redis" else FakeAsyncRedis()
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


class Clock:
    """A wall clock a test sets (epoch seconds)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


async def test_a_monthly_cap_resets_at_local_midnight_and_january_keeps_its_spend(redis: Redis) -> None:
    clock = Clock(epoch("2026-01-31 20:00"))
    b = Budgets(redis, default_user_cap_usd=None, now=clock, zone=NY)
    await b.set_cap(ALICE, 0.05, MONTHLY)
    guard = b.guard(job_id="job_a", run=1, tenant="acme", user="alice", batch_id="b1")
    assert await guard.reserve(1, "dep-x", 0.03) is None
    assert await b.settle("job_a", {"1:1": 0.03}) == 1
    assert await guard.reserve(2, "dep-x", 0.02) is None  # exactly the cap: held, in flight
    refusal = await guard.reserve(3, "dep-x", 0.01)
    assert refusal == (
        "user acme/alice (monthly from 2026-01-01): spent $0.0300 + held $0.0200 of cap $0.0500; "
        "this call needs up to $0.0100 on dep-x"
    )
    assert refusal.wait  # the hold in flight may settle for less

    clock.at = epoch("2026-02-01 04:59", UTC)  # February in UTC, still January 31st in New York
    assert await guard.reserve(3, "dep-x", 0.01) is not None
    clock.at = epoch("2026-02-01 00:00")  # midnight in New York: a new month, from nothing
    assert await guard.reserve(3, "dep-x", 0.01) is None
    feb = await b.usage(ALICE, MONTHLY)
    assert feb == ScopeUsage(ALICE, 0.0, 0.01, 0.05, MONTHLY, local("2026-02-01"), local("2026-03-01"))
    assert feb.remaining_usd == 0.04

    # The hold taken on January 31st settles into January, after the boundary too.
    assert await b.settle("job_a", {"1:2": 0.015, "1:3": 0.004}) == 2
    jan = await b.usage(ALICE, MONTHLY, at=epoch("2026-01-15 12:00"))
    assert (jan.spent_usd, jan.reserved_usd, jan.period_start) == (0.045, 0.0, local("2026-01-01"))
    assert (await b.usage(ALICE, MONTHLY)).spent_usd == 0.004
    assert (await b.usage(ALICE)).spent_usd == 0.049  # the lifetime counter has it all
    # January's counters expire by themselves two days after the month (no reset job): the TTL set
    # by the last hold taken in January (at 20:00 on the 31st, by the clock of the process).
    ttl = await redis.ttl(keys.budget(f"{ALICE}:monthly:2026-01-01"))
    expected = 4 * 3600 + keys.BUDGET_PERIOD_GRACE_S
    assert expected - 5 <= ttl <= expected
    assert await redis.ttl(keys.budget(ALICE)) == -1  # lifetime: kept


async def test_a_call_needs_room_under_every_cap_of_every_scope(redis: Redis) -> None:
    clock = Clock(epoch("2026-03-02 09:00", UTC))  # a Monday
    b = Budgets(redis, default_user_cap_usd=None, now=clock, zone=UTC)
    await b.set_cap(ALICE, 0.10, DAILY)
    await b.set_cap(ALICE, 0.25, MONTHLY)
    await b.set_cap(tenant_scope("acme"), 0.22, WEEKLY)
    guard = b.guard(job_id="job_b", run=1, tenant="acme", user="alice", batch_id="b1")
    attempt = iter(range(1, 100))

    async def spend(usd: float) -> str | None:
        n = next(attempt)
        refusal = await guard.reserve(n, "dep-x", usd)
        if refusal is None:
            await b.settle("job_b", {f"1:{n}": usd})
        return refusal

    assert await spend(0.08) is None
    assert (await spend(0.03) or "").startswith("user acme/alice (daily from 2026-03-02): spent $0.0800")
    clock.at += 86400  # Tuesday: the daily cap starts again; the week and the month go on
    assert await spend(0.10) is None
    clock.at += 86400
    refusal = await spend(0.05)
    assert (refusal or "").startswith("tenant acme (weekly from 2026-03-02): spent $0.1800")
    clock.at += 6 * 86400  # the next Monday: a new week
    assert await spend(0.05) is None
    assert (await spend(0.05) or "").startswith("user acme/alice (monthly from 2026-03-01): spent $0.2300")
    # Nothing refused was taken from any counter: every cap still sees what was settled.
    usage = await b.every_cap_usage()
    assert [(u.scope, u.period, round(u.spent_usd, 6), u.cap_usd) for u in usage] == [
        (tenant_scope("acme"), WEEKLY, 0.05, 0.22),
        (ALICE, DAILY, 0.05, 0.10),
        (ALICE, MONTHLY, 0.23, 0.25),
    ]
    assert await b.caps() == {}  # lifetime caps only, as before periods
    assert await b.period_caps() == {
        BudgetPeriod.LIFETIME: {},
        DAILY: {ALICE: 0.10},
        WEEKLY: {tenant_scope("acme"): 0.22},
        MONTHLY: {ALICE: 0.25},
    }
    await b.set_cap(ALICE, None, DAILY)
    assert [u.period for u in await b.every_cap_usage()] == [WEEKLY, MONTHLY]


# -- through a worker ----------------------------------------------------------------------------

# Input is free and each answer is exactly max_tokens (10) at $1,000 per million: every call costs,
# and holds, $0.01 exactly.
PRICEY = [deployment("pricey-a", latency_ms=1, price={"input_per_mtok": 0.0, "output_per_mtok": 1000.0})]


@pytest.mark.parametrize("backend_name", ["embedded", "services"])
async def test_a_monthly_budget_resets_at_the_boundary_on_a_fake_clock(
    backend_name: str, tmp_path: Path
) -> None:
    """The worker path end to end: a user's monthly cap in New York time, spent in late January."""
    clock = Clock(epoch("2026-01-31 22:00"))
    async with open_backend(backend_name, tmp_path, budget_timezone="America/New_York") as backend:
        backend.store.db.now = lambda: datetime.fromtimestamp(clock.at, UTC)  # the ledger's clock
        catalog = make_catalog(PRICEY)
        redis = await backend.redis()
        settings = backend.settings
        scope = user_scope(settings.tenant, settings.user)
        await Budgets(redis).set_cap(scope, 0.03, MONTHLY)
        client = Client(redis, backend.store, settings)

        async def run(n: int) -> list[JobStatus]:
            asked = [
                NewJob(
                    f"q{i}", ChatRequest(messages=[Message(role="user", content=f"Hi {i}")], max_tokens=10)
                )
                for i in range(n)
            ]
            batch_id = await client.submit_batch(asked)
            await backend.run_worker(catalog=catalog, sim_world=sim_world_for(catalog), now=clock)
            jobs = [job async for job in client.results(batch_id)]
            for job in jobs:
                if job.failure is not None:
                    assert job.failure.code is FailureCode.BUDGET_EXCEEDED
                    assert (
                        f"user {settings.tenant}/{settings.user} (monthly from 2026-01-01): spent $0.0300 "
                        "+ held $0.0000 of cap $0.0300; this call needs up to $0.0100 on pricey-a"
                    ) in job.failure.message
            return [job.status for job in jobs]

        assert await run(3) == [JobStatus.SUCCEEDED] * 3  # $0.03: the month's cap, reached
        assert await run(1) == [JobStatus.FAILED]
        clock.at = epoch("2026-02-01 04:30", UTC)  # February in UTC, not yet in New York
        assert await run(1) == [JobStatus.FAILED]
        clock.at = epoch("2026-02-01 00:00")  # midnight in New York
        assert await run(1) == [JobStatus.SUCCEEDED]

        budgets = Budgets(redis, now=clock, zone=NY)
        jan = await budgets.usage(scope, MONTHLY, at=epoch("2026-01-20 12:00"))
        feb = await budgets.usage(scope, MONTHLY)
        assert (jan.spent_usd, jan.period_start, feb.spent_usd, feb.remaining_usd) == (
            0.03,
            local("2026-01-01"),
            0.01,
            0.02,
        )
        assert (await budgets.usage(scope)).spent_usd == 0.04

        # The ledger reports the same months: January's three calls were made on the 31st in New
        # York, already February 1st in UTC.
        async def months(zone: ZoneInfo) -> list[tuple[str, float, int]]:
            found = await spend_per_period(
                backend.store,
                MONTHLY,
                zone,
                tenant=settings.tenant,
                since=local("2026-01-01", UTC),
                until=local("2026-03-01", UTC),
            )
            return [(p.start.isoformat(), float(p.cost_usd), p.calls) for p in found]

        assert await months(NY) == [("2026-01-01", 0.03, 3), ("2026-02-01", 0.01, 1)]
        assert await months(ZoneInfo("UTC")) == [("2026-02-01", 0.04, 4)]


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def cli_redis(monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI pointed at the real Redis (its caps must outlive one command), flushed first."""
    url = service_url(REDIS_ENV)
    monkeypatch.setenv("ROUTEQ_REDIS_URL", url)
    monkeypatch.setenv("ROUTEQ_BUDGET_TIMEZONE", "America/New_York")

    async def flush() -> None:
        client = Redis.from_url(url)
        await client.flushdb()
        await client.aclose()

    asyncio.run(flush())
    return url


def test_the_cli_sets_caps_per_period_and_shows_every_cap_with_its_period(
    cli_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "console", Console(width=200, emoji=False))
    said = []
    for args in (
        ["tenant:acme", "10"],
        ["tenant:acme", "5", "--period", "monthly"],
        ["tenant:acme", "1", "--period", "daily"],
        ["user:acme/ana", "2", "--period", "weekly"],
    ):
        done = runner.invoke(app, ["budget", "set", *args])
        assert done.exit_code == 0, done.output
        said.append(done.output)
    assert said[:2] == ["tenant:acme: cap $10.0000\n", "tenant:acme: monthly cap $5.0000\n"]
    bad = runner.invoke(app, ["budget", "set", "tenant:acme", "1", "--period", "yearly"])
    assert bad.exit_code == 2
    assert "Invalid value for '--period'" in bad.output
    assert "'yearly' is not one of" in bad.output

    async def spend() -> float:
        client = Redis.from_url(cli_redis)
        b = Budgets(client, zone=NY)
        guard = b.guard(job_id="job_s", run=1, tenant="acme", user="ana", batch_id="b1")
        assert await guard.reserve(1, "dep-x", 0.5) is None
        await b.settle("job_s", {"1:1": 0.25})
        await client.aclose()
        return time.time()

    before = time.time()
    after = asyncio.run(spend())
    # The current period's start, as the CLI computes it (the same on either side of the call unless
    # local midnight passed in between).
    months = {period_label(period_bounds(MONTHLY, t, NY)[0]) for t in (before, after)}

    shown = json.loads(runner.invoke(app, ["budget", "show", "--json"]).output)
    assert shown["timezone"] == "America/New_York"
    rows = [
        (c["scope"], c["period"], c["spent_usd"], c["cap_usd"], c["remaining_usd"]) for c in shown["caps"]
    ]
    assert rows == [
        ("tenant:acme", "lifetime", 0.25, 10.0, 9.75),
        ("tenant:acme", "daily", 0.25, 1.0, 0.75),
        ("tenant:acme", "monthly", 0.25, 5.0, 4.75),
        ("user:acme/ana", "weekly", 0.25, 2.0, 1.75),
    ]
    assert shown["caps"][0]["period_start"] is None
    assert shown["caps"][2]["period_start"][:10] in months
    assert shown["caps"][2]["period_start"][10:] in ("T00:00:00-05:00", "T00:00:00-04:00")

    table = runner.invoke(app, ["budget", "show"]).output
    assert "America/New_York" in table
    assert any(re.search(rf"tenant:acme\s*│\s*monthly\s*│\s*{m}\s*│\s*\$0.2500", table) for m in months), (
        table
    )
    one = runner.invoke(app, ["budget", "show", "tenant:acme"]).output.splitlines()
    assert one[0] == "tenant:acme: spent $0.2500, held $0.0000, cap $10.0000"
    assert one[2].startswith("tenant:acme monthly from 20")
    assert one[2].endswith(": spent $0.2500, held $0.0000, cap $5.0000, remaining $4.7500")

    one = json.loads(runner.invoke(app, ["budget", "show", "user:acme/ana", "--json"]).output)
    assert (one["cap_usd"], [(c["period"], c["cap_usd"]) for c in one["periods"]]) == (1.0, [("weekly", 2.0)])
    assert runner.invoke(app, ["budget", "unset", "tenant:acme", "--period", "daily"]).exit_code == 0
    shown = json.loads(runner.invoke(app, ["budget", "show", "--json"]).output)
    assert [c["period"] for c in shown["caps"]] == ["lifetime", "monthly", "weekly"]
    zone = runner.invoke(app, ["budget", "show"], env={"ROUTEQ_BUDGET_TIMEZONE": "Mars/Base"})
    assert zone.exit_code == 2
    assert "ROUTEQ_BUDGET_TIMEZONE: Value error, unknown time zone 'Mars/Base'" in zone.output


def test_a_window_of_too_many_periods_is_refused() -> None:
    since, until = local("2020-01-01", UTC), local("2026-01-01", UTC)
    assert len(period_starts(MONTHLY, since, until, UTC)) == 72
    with pytest.raises(ValueError, match="more than 1000 daily periods: shorten it"):
        period_starts(DAILY, since, until, UTC)


@pytest.fixture
async def store(redis: Redis, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """SQLite beside fakeredis, PostgreSQL beside a real Redis."""
    async with store_beside(request.node.callspec.params["redis"], tmp_path) as opened:
        yield opened


async def test_rebuild_restores_the_current_periods_from_the_ledger(redis: Redis, store: Store) -> None:
    b = Budgets(redis, default_user_cap_usd=None, zone=NY)  # the real clock: the ledger's rows are now
    first, second = await new_jobs(store, "acme", "alice", 2)
    await charge(store, b, first, "0.1", "0.2")
    live = b.guard(job_id=second.id, run=1, tenant="acme", user="alice", batch_id=second.batch_id)
    assert await live.reserve(1, "dep-x", 0.05) is None  # a call in flight: held, not in the ledger

    async def counters(scope: str) -> list[tuple[float, float]]:
        return [((u := await b.usage(scope, p)).spent_usd, u.reserved_usd) for p in (DAILY, WEEKLY, MONTHLY)]

    def counter(scope: str, period: BudgetPeriod) -> str:
        return f"{scope}:{period.value}:{period_label(period_bounds(period, time.time(), NY)[0])}"

    assert await counters(ALICE) == [(0.3, 0.05)] * 3
    monthly, daily = counter(ALICE, MONTHLY), counter(ALICE, DAILY)
    old = f"{ALICE}:monthly:2020-01-01"  # a past month: the rebuild leaves it be
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.budget(monthly), mapping={"spent": "999", "reserved": "777"})
        pipe.delete(keys.budget(daily))
        pipe.hset(keys.budget(old), mapping={"spent": "5000", "reserved": "0"})
        await pipe.execute()

    written = await b.rebuild_periods_from_ledger(store)

    assert await counters(ALICE) == [(0.3, 0.05)] * 3
    assert (written[monthly], written[daily], written[counter(tenant_scope("acme"), WEEKLY)]) == (
        0.3,
        0.3,
        0.3,
    )
    assert await redis.hget(keys.budget(old), "spent") == b"5000"  # type: ignore[misc]
    assert 0 < await redis.ttl(keys.budget(daily)) <= 86400 + 3600 + keys.BUDGET_PERIOD_GRACE_S
    assert await b.rebuild_periods_from_ledger(store) == written  # right counters stay right
    assert await b.settle(second.id, {"1:1": 0.01}) == 1
    assert (await b.usage(ALICE, MONTHLY)).spent_usd == 0.31
