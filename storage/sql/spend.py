"""Spend from the SQL ledger: per user, API key or batch (`GET /v1/spend`, `routeq spend`), and per
day, week or month (`GET /v1/analytics?period=`).

The ledger holds one row per billed call, unique per (job, run, attempt): a delivery arq repeats,
or a run replayed, cannot add a second row, so every sum here counts each call once. The window is
half-open, `since <= created_at < until`. A tenant sees only its own rows; `tenant=None` (operators)
sees every tenant's.

Periods are the budgets' (`router_core.periods`): local midnights in the fleet's zone, weeks from
Monday. Each charge is put in its period by a CASE over the periods' starts (computed in Python with
`zoneinfo`, sent as UTC times), so SQLite and PostgreSQL bucket alike, daylight saving included.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal_column, select

from router_core.periods import BudgetPeriod, period_starts
from storage.sql.schema import attempts, jobs, ledger
from storage.sql.store import Store

__all__ = ["PeriodSpend", "SpendGroup", "SpendRow", "spend_by", "spend_per_period"]


class SpendGroup(enum.StrEnum):
    """What `spend_by` groups charges by."""

    USER = "user"  # the API key's user (or the CLI's ROUTEQ_USER) who submitted the job
    KEY = "key"  # the API key that submitted it (None: the CLI or the Python client, no key)
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One group's charges in the window."""

    tenant: str
    group: str | None  # a user, an API key id or a batch id; None: jobs submitted without a key
    cost_usd: Decimal
    requests: int  # jobs with at least one charge in the window
    tokens: int  # input + output tokens of the charged calls


@dataclass(frozen=True, slots=True)
class PeriodSpend:
    """Charges in one day, week or month (cut by the window at either end)."""

    start: date  # the local date the period began
    cost_usd: Decimal
    calls: int  # billed calls


def _window(tenant: str | None, since: datetime, until: datetime) -> ColumnElement[bool]:
    # SQLite compares stored times as UTC text: the bounds go as UTC too.
    charged = (ledger.c.created_at >= since.astimezone(UTC)) & (ledger.c.created_at < until.astimezone(UTC))
    return charged if tenant is None else charged & (ledger.c.tenant == tenant)


def _group_column(group: SpendGroup) -> ColumnElement[Any]:
    columns: dict[SpendGroup, ColumnElement[Any]] = {
        SpendGroup.USER: ledger.c.user_id,
        SpendGroup.KEY: jobs.c.api_key_id,
        SpendGroup.BATCH: ledger.c.batch_id,
    }
    return columns[group]


async def spend_by(
    store: Store,
    group: SpendGroup,
    *,
    tenant: str | None,
    since: datetime,
    until: datetime,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[SpendRow], bool]:
    """Charges per (tenant, `group`) in `[since, until)`, most cost first: `limit` rows from
    `offset`, and whether more follow."""
    key = _group_column(group)
    cost = func.coalesce(func.sum(ledger.c.cost_usd), 0)
    tokens = func.coalesce(func.sum(attempts.c.input_tokens + attempts.c.output_tokens), 0)
    call = (
        (attempts.c.job_id == ledger.c.job_id)
        & (attempts.c.run == ledger.c.run)
        & (attempts.c.attempt_no == ledger.c.attempt_no)
    )
    query = (
        select(ledger.c.tenant, key, cost, func.count(func.distinct(ledger.c.job_id)), tokens)
        .select_from(ledger.join(jobs, jobs.c.id == ledger.c.job_id).outerjoin(attempts, call))
        .where(_window(tenant, since, until))
        .group_by(ledger.c.tenant, key)
        .order_by(cost.desc(), ledger.c.tenant, key.asc().nulls_last())
        .limit(limit + 1)
        .offset(offset)
    )
    async with store.reading() as conn:
        found = (await conn.execute(query)).all()
    rows = [
        SpendRow(t, name, Decimal(total), int(requests), int(used))
        for t, name, total, requests, used in found[:limit]
    ]
    return rows, len(found) > limit


async def spend_per_period(
    store: Store,
    period: BudgetPeriod,
    zone: tzinfo,
    *,
    tenant: str | None,
    since: datetime,
    until: datetime,
) -> list[PeriodSpend]:
    """Charges per day, week or month (local to `zone`) in `[since, until)`, oldest first; periods
    without a charge are left out.

    Raises:
        ValueError: `period` is lifetime.
    """
    starts = period_starts(period, since, until, zone)
    # CASE WHEN t < start[1] THEN 0 WHEN t < start[2] THEN 1 ... ELSE last: the window keeps t >= since.
    whens = [(ledger.c.created_at < start.astimezone(UTC), i) for i, start in enumerate(starts[1:])]
    bucket = (case(*whens, else_=len(starts) - 1) if whens else literal_column("0")).label("bucket")
    charges = select(bucket, ledger.c.cost_usd).where(_window(tenant, since, until)).subquery()
    query = (
        select(charges.c.bucket, func.sum(charges.c.cost_usd), func.count())
        .group_by(charges.c.bucket)
        .order_by(charges.c.bucket)
    )
    async with store.reading() as conn:
        found = (await conn.execute(query)).all()
    return [PeriodSpend(starts[int(i)].date(), Decimal(total), int(n)) for i, total, n in found]
