"""Reading the cost ledger: charges by batch or job, a job's charges by call, spend per owner
(tenant, user, batch, end user).

Rows are written only by `Runs` (with the run's outcome, in one transaction); this room reads them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, cast, func, select

from storage.sql.database import Database
from storage.sql.schema import attempts, jobs, ledger

__all__ = ["Ledger", "OwnerSpend"]


class Ledger:
    """Reads of the `ledger` table (operators, workers and the budgets' rebuild)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def rows(self, *, batch_id: str | None = None, job_id: str | None = None) -> list[dict[str, Any]]:
        """Every charge, or a batch's or a job's, in the order recorded."""
        query = select(ledger).order_by(ledger.c.id)
        if batch_id is not None:
            query = query.where(ledger.c.batch_id == batch_id)
        if job_id is not None:
            query = query.where(ledger.c.job_id == job_id)
        async with self._db.reading() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]

    async def recorded_calls(self, job_id: str) -> dict[str, Decimal]:
        """Every call of the job that a committed run recorded, `{"<run>:<attempt_no>": cost}`.

        The cost is the ledger's charge, 0 for a call recorded without one (the provider did not
        bill it). A budget hold whose key is missing here is a call no run recorded: in doubt.
        """
        charged = ledger.c.cost_usd
        query = (
            select(attempts.c.run, attempts.c.attempt_no, charged)
            .select_from(
                attempts.outerjoin(
                    ledger,
                    (ledger.c.job_id == attempts.c.job_id)
                    & (ledger.c.run == attempts.c.run)
                    & (ledger.c.attempt_no == attempts.c.attempt_no),
                )
            )
            .where(attempts.c.job_id == job_id)
        )
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return {f"{run}:{number}": Decimal(cost or 0) for run, number, cost in rows}

    async def billed(self, batch_id: str) -> tuple[Decimal, int]:
        """The batch's total charge and number of billed calls, failed runs included."""
        query = select(func.coalesce(func.sum(ledger.c.cost_usd), 0), func.count()).where(
            ledger.c.batch_id == batch_id
        )
        async with self._db.reading() as conn:
            total, calls = (await conn.execute(query)).one()
        return Decimal(total), int(calls)

    async def micro_spent_by_owner(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[OwnerSpend]:
        """Micro-dollars charged per owner (tenant, user, batch, and the job's end user), in one read;
        only charges recorded in `[since, until)` when given (a budget period's rebuild).

        The end user is the charged job's (`jobs.end_user`, its request's `user`): joined on the
        job's primary key, each ledger row is counted once, as it is billed once.

        Each charge is rounded up to a whole micro-dollar before summing, as the budgets' settle
        does (`storage.fleet.budgets`), so a rebuild of counters that were right changes nothing.
        The cost is first made the exact integer of ledger quanta (1e-10 USD; on SQLite it is a
        float, and a float times 1e6 can land just above a whole micro), then ceiling-divided in
        integers.
        """
        quanta = cast(func.round(ledger.c.cost_usd * 10_000_000_000), BigInteger)
        micro = func.sum((quanta + 9_999) // 10_000)
        owner = (ledger.c.tenant, ledger.c.user_id, ledger.c.batch_id, jobs.c.end_user)
        query = (
            select(*owner, micro)
            .select_from(ledger.outerjoin(jobs, jobs.c.id == ledger.c.job_id))
            .group_by(*owner)
        )
        if since is not None:  # SQLite compares stored times as UTC text: bounds go as UTC
            query = query.where(ledger.c.created_at >= since.astimezone(UTC))
        if until is not None:
            query = query.where(ledger.c.created_at < until.astimezone(UTC))
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [
            OwnerSpend(tenant, user, batch, end_user, int(total or 0))
            for tenant, user, batch, end_user, total in rows
        ]


class OwnerSpend(NamedTuple):
    """What the ledger charged one owner: a tenant's user, in one batch, for one end user (or none)."""

    tenant: str
    user: str
    batch_id: str
    end_user: str | None
    micro: int
