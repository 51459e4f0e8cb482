"""The response cache in SQL: answers are the jobs that already hold them.

Every result is in `jobs` already, so the exact cache is an index, not a copy: a job that used the
cache carries its request's `cache_key` (router_core.cache), and the answer for a key is the newest
job of the tenant with that key whose answer a provider gave (succeeded, not a hit itself: a hit's
answer is its source's), finished within the TTL the request accepts and after the tenant's last
clear (`ix_jobs_cached`, a partial index over those rows only, migration 0010). Nothing is
evicted: an answer too old for one request may serve another that accepts older ones, and the
cache can never crowd out queue or fleet keys in Redis, because it keeps nothing there.

    lookup      the newest answers of a tenant for a key, younger than `since`, after the last clear
    answers     the answers of given jobs (a semantic search's neighbours), with the same rules
    policy      a tenant's cache defaults (`cache_policies`), set_policy, clear (a marker, O(1))
    stats       what the cache did for a tenant (or every tenant) over a window
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    update,
)

from storage.bus.coalesce import TickBatcher
from storage.jobs import JobStatus, TenantScope, aware
from storage.sql.database import Database, owned_by
from storage.sql.schema import cache_policies, jobs

__all__ = ["CacheRecord", "CacheStats", "CachedAnswer", "ResponseCache", "TenantCachePolicy"]

_P = cache_policies.c
_J = jobs.c
_CANDIDATES = 8  # newest answers read per lookup: the first that fits the request's constraints wins


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A succeeded job whose answer may serve another request."""

    job_id: str
    source_job: str  # the job whose provider call made the answer (the job itself: hits are not found)
    deployment: str
    result: dict[str, Any]
    saved_usd: Decimal  # what the source's calls cost
    finished_at: datetime


@dataclass(frozen=True, slots=True)
class CacheRecord:
    """What a finished job records about its use of the cache (`Runs.finish`)."""

    key: str
    source_job: str | None = None  # a hit: where its answer came from
    similarity: float | None = None  # a semantic hit
    saved_usd: Decimal | None = None  # a hit: the source's cost


@dataclass(frozen=True, slots=True)
class TenantCachePolicy:
    """A tenant's row in `cache_policies`; None fields fall back to the fleet's settings."""

    tenant: str
    enabled: bool | None = None
    ttl_s: int | None = None
    semantic: bool | None = None
    threshold: float | None = None
    cleared_at: datetime | None = None

    def overrides(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("enabled", "ttl_s", "semantic", "threshold")}


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What the cache did over a window: jobs that used it, hits among them, dollars not paid."""

    jobs: int  # finished jobs that used the cache (read or wrote it)
    hits: int
    semantic_hits: int
    saved_usd: Decimal
    entries: int  # distinct answers that may still be served (after the last clear)

    @property
    def misses(self) -> int:
        return self.jobs - self.hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.jobs if self.jobs else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "hits": self.hits,
            "semantic_hits": self.semantic_hits,
            "misses": self.misses,
            "hit_rate": round(self.hit_rate, 4),
            "saved_usd": float(self.saved_usd),
            "entries": self.entries,
        }


class ResponseCache:
    """`store.cache`: reads of cached answers and the tenants' cache policies."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._upsert = db.insert_ignoring_duplicates(cache_policies)
        self._lookups: TickBatcher[_Lookup, list[CachedAnswer]] = TickBatcher(self._lookup_many)

    async def lookup(self, tenant: str, key: str, *, since: datetime) -> list[CachedAnswer]:
        """The tenant's newest answers for `key` finished at or after `since` (newest first).

        Lookups made together (a worker's concurrent jobs) share one query per tenant (`_lookups`).
        """
        return await self._lookups.submit(_Lookup(tenant, key, since))

    async def _lookup_many(self, lookups: list[_Lookup]) -> list[list[CachedAnswer]]:
        """One query per tenant for a turn's lookups: each key's newest answers since the earliest
        `since` asked, then each lookup's own window."""
        found: dict[tuple[str, str], list[CachedAnswer]] = {}
        by_tenant: dict[str, list[_Lookup]] = {}
        for lookup in lookups:
            by_tenant.setdefault(lookup.tenant, []).append(lookup)
        async with self._db.reading() as conn:
            for tenant, asked in by_tenant.items():
                keys = sorted({lookup.key for lookup in asked})
                params = {"b_tenant": tenant, "b_since": min(a.since for a in asked), "b_keys": keys}
                for row in (await conn.execute(_LOOKUP_MANY, params)).all():
                    found.setdefault((tenant, row.cache_key), []).append(_answer(row))
        return [
            [a for a in found.get((lookup.tenant, lookup.key), []) if a.finished_at >= lookup.since]
            for lookup in lookups
        ]

    async def answers(
        self, tenant: str, job_ids: Sequence[str], *, since: datetime
    ) -> dict[str, CachedAnswer]:
        """The answers of `job_ids` that the tenant may be served (a semantic search's neighbours)."""
        if not job_ids:
            return {}
        async with self._db.reading() as conn:
            rows = (await conn.execute(_OF_JOBS, {"b_ids": list(job_ids)})).all()
        answers = [_answer(row) for row in rows if row.tenant == tenant]
        return {answer.job_id: answer for answer in answers if answer.finished_at >= since}

    async def policy(self, tenant: str) -> TenantCachePolicy | None:
        query = select(_P.tenant, _P.enabled, _P.ttl_s, _P.semantic, _P.threshold, _P.cleared_at).where(
            _P.tenant == tenant
        )
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        values = dict(row._mapping)
        values["cleared_at"] = aware(values["cleared_at"])
        return TenantCachePolicy(**values)

    async def set_policy(self, policy: TenantCachePolicy) -> None:
        """Replace the tenant's defaults (None: the fleet's); its last clear is kept."""
        await self._write_policy(policy.tenant, self._db.now(), **policy.overrides())

    async def clear(self, tenant: str) -> datetime:
        """Stop serving every answer the tenant has so far (a marker: nothing is deleted); when."""
        now = self._db.now()
        await self._write_policy(tenant, now, cleared_at=now)
        return now

    async def _write_policy(self, tenant: str, now: datetime, **values: Any) -> None:
        """Set `values` on the tenant's row at `now`, making the row if it has none (others NULL)."""

        async def write(conn: Any) -> None:
            await conn.execute(self._upsert.values(tenant=tenant, updated_at=now, **values))
            mine = update(cache_policies).where(_P.tenant == tenant)
            await conn.execute(mine.values(updated_at=now, **values))

        await self._db.writes.run(write)

    async def forget_policy(self, tenant: str) -> None:
        """Drop the tenant's row: its defaults are the fleet's again, and its clear is undone."""

        async def write(conn: Any) -> None:
            await conn.execute(delete(cache_policies).where(_P.tenant == tenant))

        await self._db.writes.run(write)

    async def stats(self, tenant: TenantScope, *, since: datetime | None = None) -> CacheStats:
        """What the cache did for `tenant` (or every tenant) for jobs finished since `since`."""
        window = owned_by(_J.tenant, tenant) & _J.cache_key.is_not(None)
        if since is not None:
            window &= _J.finished_at >= since
        used = select(
            func.count(),
            func.count(_J.cache_source),
            func.count(_J.cache_similarity),
            func.coalesce(func.sum(_J.saved_usd), 0),
        ).where(window)
        entries = (
            select(func.count(func.distinct(_J.cache_key)))
            .select_from(jobs.outerjoin(cache_policies, _P.tenant == _J.tenant))
            .where(owned_by(_J.tenant, tenant) & _servable())
        )
        async with self._db.reading() as conn:
            counted, hits, semantic, saved = (await conn.execute(used)).one()
            distinct = (await conn.execute(entries)).scalar_one()
        return CacheStats(int(counted), int(hits), int(semantic), Decimal(saved), int(distinct))


def _servable() -> ColumnElement[bool]:
    """A provider's answer that may be served: a succeeded job with a key that was not a hit itself
    (a hit's answer is its source's), finished after its tenant's last clear (joined `cache_policies`).

    The status is written into the SQL, not bound: PostgreSQL's generic plan for a prepared
    statement (asyncpg's, after five runs) can use the partial index `ix_jobs_cached` only when it can
    prove the query's rows are the index's (`status = 'succeeded'`); with `status = $2` it scans the
    tenant's jobs of the whole window instead.
    """
    return and_(
        _J.cache_key.is_not(None),
        _J.status == literal_column(f"'{JobStatus.SUCCEEDED.value}'"),
        _J.cache_source.is_(None),
        or_(_P.cleared_at.is_(None), _J.finished_at > _P.cleared_at),
    )


# The newest `_CANDIDATES` answers of each key asked, newest first.
_RANKED = (
    select(
        _J.id,
        _J.cache_key,
        _J.deployment,
        _J.result,
        _J.cost_usd,
        _J.finished_at,
        func.row_number().over(partition_by=_J.cache_key, order_by=_J.finished_at.desc()).label("rank"),
    )
    .select_from(jobs.outerjoin(cache_policies, _P.tenant == _J.tenant))
    .where(
        (_J.tenant == bindparam("b_tenant"))
        & _servable()
        & (_J.finished_at >= bindparam("b_since"))
        & _J.cache_key.in_(bindparam("b_keys", expanding=True))
    )
    .subquery()
)
_LOOKUP_MANY = select(_RANKED).where(_RANKED.c.rank <= _CANDIDATES).order_by(_RANKED.c.rank)


@dataclass(frozen=True, slots=True)
class _Lookup:
    tenant: str
    key: str
    since: datetime


# The servable answers of some jobs (a semantic search's neighbours), with what they cost, by id
# alone: `answers` checks the tenant and the age on the rows read. With `tenant = ? AND finished_at
# >= ?` in the query SQLite read the tenant's whole window (ix_jobs_tenant_finished_at) for a few
# ids. Built once (bind names carry a b_ prefix): per-job reads then skip statement construction.
_OF_JOBS = (
    select(_J.id, _J.tenant, _J.deployment, _J.result, _J.cost_usd, _J.finished_at)
    .select_from(jobs.outerjoin(cache_policies, _P.tenant == _J.tenant))
    .where(_J.id.in_(bindparam("b_ids", expanding=True)) & _servable())
)


def _answer(row: Row[*tuple[Any, ...]]) -> CachedAnswer:
    finished = aware(row.finished_at)
    assert finished is not None  # a succeeded job has finished
    return CachedAnswer(row.id, row.id, row.deployment, row.result, Decimal(row.cost_usd or 0), finished)
