"""Routing analytics computed in SQL: totals, per-deployment stats, daily rollups per model, what
the response cache saved (overall, and per tenant for every tenant's analytics) and, when asked,
usage per end user (the `user` a request named).

Everything is aggregated by the database (SQLite and PostgreSQL alike); only one row per
deployment, per (day, model) or per (tenant, end user) comes back to Python. Percentiles are
nearest-rank, picked with `ROW_NUMBER()` / `COUNT(*)` window functions: the value at rank
ceil(P/100 * n), with the ceiling done in integer arithmetic, `(n * P + 99) / 100`, which both
dialects divide as integers.

The window is half-open, `since <= t < until`: jobs count by `finished_at`, attempts and charges by
their `created_at`. A tenant sees only its own rows; `tenant=None` (the admin) sees every tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, ColumnElement, Date, Select, case, cast, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection

from router_core.models import AttemptOutcome
from storage.jobs import TERMINAL, JobStatus
from storage.sql.schema import attempts, jobs, ledger
from storage.sql.store import Store

__all__ = [
    "Analytics",
    "CacheUsage",
    "DailyModelStats",
    "DeploymentUsage",
    "EndUserUsage",
    "Latency",
    "Totals",
    "analytics",
]


def _plain(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`asdict` factory: money as float, dates as ISO strings, everything else as is."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if isinstance(value, Decimal):
            out[key] = float(value)
        elif isinstance(value, date):  # datetime too
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Latency:
    """Nearest-rank latency percentiles in milliseconds; None when nothing was measured."""

    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class Totals:
    """The window at a glance: jobs finished, provider calls, tokens and spend."""

    requests: int  # successes + failures + cancelled
    successes: int
    failures: int
    cancelled: int
    failovers: int  # deployment switches of the jobs finished in the window
    provider_calls: int  # attempts rows: every call, failed ones too
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal  # every ledger charge, estimated ones included
    estimated_cost_usd: Decimal  # the part charged at the worst case held (worker lost mid-call)
    latency_ms: Latency  # of succeeded jobs, failovers included


@dataclass(frozen=True, slots=True)
class DeploymentUsage:
    """One deployment's provider calls in the window."""

    deployment: str
    calls: int
    successes: int
    errors: int  # failed calls and calls in doubt (their worker died)
    error_rate: float  # errors / calls
    failovers_away: int  # failed calls the router followed with a call to another deployment
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    p50_latency_ms: float | None  # of successful calls
    p95_latency_ms: float | None


@dataclass(frozen=True, slots=True)
class DailyModelStats:
    """One model's calls on one UTC day."""

    date: date
    model: str
    calls: int
    successes: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class EndUserUsage:
    """One end user's jobs, calls and spend in the window (`user` None: requests that named none)."""

    tenant: str
    user: str | None
    requests: int  # jobs finished in the window: successes + failures + cancelled
    successes: int
    failures: int
    cancelled: int
    provider_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal  # ledger charges of their jobs, estimated ones included


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """What the response cache did for jobs finished in the window (of one tenant, or all of them)."""

    tenant: str | None  # None: the window's total
    jobs: int  # jobs that used the cache: read it, or called and stored their answer
    hits: int  # served from it, no provider call
    semantic_hits: int
    misses: int
    hit_rate: float  # hits / jobs
    saved_usd: Decimal  # what the hits' source jobs paid: not paid again

    @classmethod
    def of(cls, tenant: str | None, jobs: int, hits: int, semantic_hits: int, saved: Decimal) -> CacheUsage:
        rate = round(hits / jobs, 4) if jobs else 0.0
        return cls(tenant, jobs, hits, semantic_hits, jobs - hits, rate, saved)


@dataclass(frozen=True, slots=True)
class Analytics:
    """What `GET /v1/analytics` serves. `to_dict()` gives JSON-ready values."""

    tenant: str | None
    since: datetime
    until: datetime
    totals: Totals
    deployments: tuple[DeploymentUsage, ...]  # most calls first
    daily: tuple[DailyModelStats, ...]  # by date, then model
    cache: CacheUsage
    # Every tenant's analytics only (`tenant` None): one row per tenant that used the cache.
    cache_by_tenant: tuple[CacheUsage, ...] | None
    # Asked for only (`by_end_user`): most spend first, then most requests; at most `end_user_limit`.
    end_users: tuple[EndUserUsage, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self, dict_factory=_plain)


@dataclass(frozen=True, slots=True)
class _Scope:
    """Who and when: the WHERE clause of every query."""

    tenant: str | None
    since: datetime
    until: datetime

    def jobs(self) -> ColumnElement[bool]:
        finished = (jobs.c.finished_at >= self.since) & (jobs.c.finished_at < self.until)
        return finished if self.tenant is None else finished & (jobs.c.tenant == self.tenant)

    def attempts(self) -> ColumnElement[bool]:
        made = (attempts.c.created_at >= self.since) & (attempts.c.created_at < self.until)
        if self.tenant is None:
            return made
        return made & attempts.c.job_id.in_(select(jobs.c.id).where(jobs.c.tenant == self.tenant))

    def ledger(self) -> ColumnElement[bool]:
        charged = (ledger.c.created_at >= self.since) & (ledger.c.created_at < self.until)
        return charged if self.tenant is None else charged & (ledger.c.tenant == self.tenant)


async def analytics(
    store: Store,
    *,
    tenant: str | None,
    since: datetime,
    until: datetime,
    by_end_user: bool = False,
    end_user_limit: int = 100,
) -> Analytics:
    """Routing analytics of `tenant` (None: every tenant) for `since <= t < until`; with
    `by_end_user`, also the `end_user_limit` end users (per tenant) with the most spend.

    Naive datetimes are taken as UTC. Rows are stored in UTC, and SQLite compares times as text,
    so both bounds are converted to UTC first.
    """
    scope = _Scope(tenant, _utc(since), _utc(until))
    async with store.reading() as conn:
        totals = await _totals(conn, scope)
        deployments = await _deployments(conn, scope)
        daily = await _daily(conn, scope)
        per_tenant = await _cache(conn, scope)
        end_users = await _end_users(conn, scope, end_user_limit) if by_end_user else None
    cache = CacheUsage.of(
        None,
        sum(row.jobs for row in per_tenant),
        sum(row.hits for row in per_tenant),
        sum(row.semantic_hits for row in per_tenant),
        sum((row.saved_usd for row in per_tenant), Decimal(0)),
    )
    return Analytics(
        tenant,
        scope.since,
        scope.until,
        totals,
        deployments,
        daily,
        cache=cache,
        cache_by_tenant=per_tenant if tenant is None else None,
        end_users=end_users,
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _total(column: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(column), 0)


def _percentiles(
    value: ColumnElement[Any], keys: Sequence[Column[Any]], where: ColumnElement[bool], *pcts: int
) -> Select[Any]:
    """Nearest-rank percentiles `pcts` (in percent) of `value`, one row per distinct `keys`."""
    partition = list(keys) or None
    ranked = (
        select(
            *keys,
            value.label("value"),
            func.row_number().over(partition_by=partition, order_by=value).label("rn"),
            func.count().over(partition_by=partition).label("n"),
        )
        .where(where)
        .subquery()
    )
    key_cols = [ranked.c[key.name] for key in keys]
    picks = [func.max(case((ranked.c.rn == (ranked.c.n * p + 99) // 100, ranked.c.value))) for p in pcts]
    return select(*key_cols, *picks).group_by(*key_cols)


async def _totals(conn: AsyncConnection, scope: _Scope) -> Totals:
    ok, failed, cancelled, failovers = await _jobs_done(conn, scope)
    calls = select(func.count(), _total(attempts.c.input_tokens), _total(attempts.c.output_tokens))
    n_calls, tokens_in, tokens_out = (await conn.execute(calls.where(scope.attempts()))).one()
    estimated = case((ledger.c.estimated, ledger.c.cost_usd), else_=0)
    money = select(_total(ledger.c.cost_usd), _total(estimated)).where(scope.ledger())
    cost, estimated_cost = (await conn.execute(money)).one()
    succeeded = scope.jobs() & (jobs.c.status == JobStatus.SUCCEEDED.value)
    latency = await conn.execute(_percentiles(jobs.c.latency_ms, [], succeeded, 50, 90, 95, 99))
    return Totals(
        requests=ok + failed + cancelled,
        successes=ok,
        failures=failed,
        cancelled=cancelled,
        failovers=failovers,
        provider_calls=int(n_calls),
        input_tokens=int(tokens_in),
        output_tokens=int(tokens_out),
        cost_usd=Decimal(cost),
        estimated_cost_usd=Decimal(estimated_cost),
        latency_ms=Latency(*latency.one()),
    )


async def _jobs_done(conn: AsyncConnection, scope: _Scope) -> tuple[int, int, int, int]:
    """Jobs finished in the window: (succeeded, failed, cancelled, their failovers)."""
    status = jobs.c.status
    counts = select(
        _count_if(status == JobStatus.SUCCEEDED.value),
        _count_if(status == JobStatus.FAILED.value),
        _count_if(status == JobStatus.CANCELLED.value),
        _total(jobs.c.failovers),
    ).where(scope.jobs() & status.in_([s.value for s in TERMINAL]))
    ok, failed, cancelled, failovers = (await conn.execute(counts)).one()
    return int(ok), int(failed), int(cancelled), int(failovers)


async def _costs(conn: AsyncConnection, scope: _Scope, *keys: ColumnElement[Any]) -> dict[Any, Decimal]:
    """Ledger charges summed per `keys` (a tuple of their values)."""
    rows = await conn.execute(select(*keys, _total(ledger.c.cost_usd)).where(scope.ledger()).group_by(*keys))
    return {tuple(row[:-1]): Decimal(row[-1]) for row in rows}


async def _deployments(conn: AsyncConnection, scope: _Scope) -> tuple[DeploymentUsage, ...]:
    call = attempts
    after = attempts.alias("after")  # the same run's next call, if any
    failed = call.c.outcome != AttemptOutcome.SUCCESS.value
    moved = failed & after.c.deployment.is_not(None) & (after.c.deployment != call.c.deployment)
    joined = call.outerjoin(
        after,
        (after.c.job_id == call.c.job_id)
        & (after.c.run == call.c.run)
        & (after.c.attempt_no == call.c.attempt_no + 1),
    )
    counts = await conn.execute(
        select(
            call.c.deployment,
            func.count(),
            _count_if(~failed),
            _count_if(moved),
            _total(call.c.input_tokens),
            _total(call.c.output_tokens),
        )
        .select_from(joined)
        .where(scope.attempts())
        .group_by(call.c.deployment)
    )
    ok_calls = scope.attempts() & ~failed
    latency = await conn.execute(_percentiles(call.c.latency_ms, [call.c.deployment], ok_calls, 50, 95))
    p50_p95 = {name: (p50, p95) for name, p50, p95 in latency}
    costs = await _costs(conn, scope, ledger.c.deployment)
    rows = [
        DeploymentUsage(
            deployment=name,
            calls=int(n),
            successes=int(ok),
            errors=int(n - ok),
            error_rate=(n - ok) / n,
            failovers_away=int(away),
            input_tokens=int(tokens_in),
            output_tokens=int(tokens_out),
            cost_usd=costs.get((name,), Decimal(0)),
            p50_latency_ms=p50_p95.get(name, (None, None))[0],
            p95_latency_ms=p50_p95.get(name, (None, None))[1],
        )
        for name, n, ok, away, tokens_in, tokens_out in counts
    ]
    return tuple(sorted(rows, key=lambda r: (-r.calls, r.deployment)))


def _utc_day(conn: AsyncConnection, column: ColumnElement[datetime]) -> ColumnElement[date]:
    """The UTC calendar date of a stored time: SQLite keeps UTC text, PostgreSQL a timestamptz."""
    if conn.dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return type_coerce(func.date(column), Date)


async def _daily(conn: AsyncConnection, scope: _Scope) -> tuple[DailyModelStats, ...]:
    day = _utc_day(conn, attempts.c.created_at).label("day")
    counts = await conn.execute(
        select(
            day,
            attempts.c.model,
            func.count(),
            _count_if(attempts.c.outcome == AttemptOutcome.SUCCESS.value),
            _total(attempts.c.input_tokens),
            _total(attempts.c.output_tokens),
        )
        .where(scope.attempts())
        .group_by(day, attempts.c.model)
    )
    costs = await _costs(conn, scope, _utc_day(conn, ledger.c.created_at).label("day"), ledger.c.model)
    rows = [
        DailyModelStats(
            date=on,
            model=model,
            calls=int(n),
            successes=int(ok),
            errors=int(n - ok),
            input_tokens=int(tokens_in),
            output_tokens=int(tokens_out),
            cost_usd=costs.get((on, model), Decimal(0)),
        )
        for on, model, n, ok, tokens_in, tokens_out in counts
    ]
    return tuple(sorted(rows, key=lambda r: (r.date, r.model)))


async def _cache(conn: AsyncConnection, scope: _Scope) -> tuple[CacheUsage, ...]:
    """The response cache's use per tenant: jobs that used it, hits (semantic ones), dollars saved."""
    rows = await conn.execute(
        select(
            jobs.c.tenant,
            func.count(),
            func.count(jobs.c.cache_source),
            func.count(jobs.c.cache_similarity),
            _total(jobs.c.saved_usd),
        )
        .where(scope.jobs() & jobs.c.cache_key.is_not(None))
        .group_by(jobs.c.tenant)
    )
    usage = [
        CacheUsage.of(t, int(n), int(hits), int(semantic), Decimal(saved))
        for t, n, hits, semantic, saved in rows
    ]
    return tuple(sorted(usage, key=lambda u: (-u.saved_usd, -u.jobs, u.tenant or "")))


async def _end_users(conn: AsyncConnection, scope: _Scope, limit: int) -> tuple[EndUserUsage, ...]:
    """Usage per (tenant, end user): jobs by `finished_at`, calls and charges by their own time,
    each joined to its job for the end user (`jobs.end_user`, the request's `user`)."""
    owner = (jobs.c.tenant, jobs.c.end_user)
    status = jobs.c.status
    done = await conn.execute(
        select(
            *owner,
            _count_if(status == JobStatus.SUCCEEDED.value),
            _count_if(status == JobStatus.FAILED.value),
            _count_if(status == JobStatus.CANCELLED.value),
        )
        .where(scope.jobs() & status.in_([s.value for s in TERMINAL]))
        .group_by(*owner)
    )
    calls = await conn.execute(
        select(*owner, func.count(), _total(attempts.c.input_tokens), _total(attempts.c.output_tokens))
        .select_from(attempts.join(jobs, jobs.c.id == attempts.c.job_id))
        .where(scope.attempts())
        .group_by(*owner)
    )
    charged = await conn.execute(
        select(*owner, _total(ledger.c.cost_usd))
        .select_from(ledger.join(jobs, jobs.c.id == ledger.c.job_id))
        .where(scope.ledger())
        .group_by(*owner)
    )
    jobs_done = {(t, u): (int(ok), int(failed), int(cancelled)) for t, u, ok, failed, cancelled in done}
    made = {(t, u): (int(n), int(tokens_in), int(tokens_out)) for t, u, n, tokens_in, tokens_out in calls}
    costs = {(t, u): Decimal(cost) for t, u, cost in charged}
    rows = []
    for key in jobs_done.keys() | made.keys() | costs.keys():
        ok, failed, cancelled = jobs_done.get(key, (0, 0, 0))
        n_calls, tokens_in, tokens_out = made.get(key, (0, 0, 0))
        rows.append(
            EndUserUsage(
                tenant=key[0],
                user=key[1],
                requests=ok + failed + cancelled,
                successes=ok,
                failures=failed,
                cancelled=cancelled,
                provider_calls=n_calls,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_usd=costs.get(key, Decimal(0)),
            )
        )
    rows.sort(key=lambda r: (-r.cost_usd, -r.requests, r.tenant, r.user is None, r.user or ""))
    return tuple(rows[:limit])
