"""Webhooks in SQL: a tenant's endpoints, and the outbox's deliveries as the sender works them.

    endpoints      add (a secret of its own, shown once), list, remove (its pending deliveries fail)
    tenant_secret  the secret a tenant's batch webhooks are signed with (made on first use)
    claim_due      pending deliveries due now, each with its attempt number: one UPDATE ... RETURNING
                   that moves `next_attempt_at` past the attempt's lease, so two workers never send
                   the same attempt (a worker that dies mid-attempt frees it when the lease ends)
    record         the attempt's row and the delivery's new state, guarded by the attempt number
    deliveries     a tenant's deliveries with their attempts (by batch, by state); retry one that failed

The events themselves are written by `storage/sql/outbox.py`, in the transactions that finish jobs
and batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import NotFoundError
from storage.jobs import TenantScope, aware, new_id
from storage.sql.database import Database, owned_by
from storage.sql.schema import webhook_attempts, webhook_deliveries, webhook_endpoints, webhook_secrets
from storage.webhooks.model import Delivery, DeliveryAttempt, DeliveryState, Endpoint, EventType
from storage.webhooks.signing import new_secret

__all__ = ["Claimed", "Webhooks"]

_E = webhook_endpoints.c
_D = webhook_deliveries.c
_A = webhook_attempts.c
_PENDING = DeliveryState.PENDING.value


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery claimed for one attempt: what to send, where, signed with which secret."""

    id: str
    attempt_no: int
    url: str
    event_id: str
    body: str
    secret: str


class Webhooks:
    """Endpoints and deliveries: the API and CLI manage them, the workers' sender works them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- endpoints --------------------------------------------------------------------------------

    async def add_endpoint(self, tenant: str, url: str, events: Sequence[EventType]) -> Endpoint:
        """Register an endpoint (its `url` checked by the caller); the one returned shows its secret."""
        endpoint = Endpoint(new_id("whe"), tenant, url, list(events), self._db.now(), secret=new_secret())
        row = {
            "id": endpoint.id,
            "tenant": tenant,
            "url": url,
            "secret": endpoint.secret,
            "events": [e.value for e in endpoint.events],
            "batch_id": None,
            "created_at": endpoint.created_at,
        }

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(webhook_endpoints.insert(), row)

        await self._db.writes.run(write)
        return endpoint

    async def endpoints(self, tenant: TenantScope) -> list[Endpoint]:
        """The endpoints a tenant registered (not batches' own URLs), oldest first, without secrets."""
        query = (
            select(webhook_endpoints)
            .where(owned_by(_E.tenant, tenant) & _E.batch_id.is_(None) & _E.removed_at.is_(None))
            .order_by(_E.created_at, _E.id)
        )
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [_endpoint(row._mapping) for row in rows]

    async def remove_endpoint(self, endpoint_id: str, *, tenant: TenantScope) -> None:
        """Stop sending to an endpoint: no new events, and its pending deliveries fail.

        Raises:
            NotFoundError: no such endpoint of this tenant (or it was removed already).
        """
        now = self._db.now()

        async def write(conn: AsyncConnection) -> int:
            removed = await conn.execute(
                update(webhook_endpoints)
                .where((_E.id == endpoint_id) & owned_by(_E.tenant, tenant) & _E.removed_at.is_(None))
                .values(removed_at=now)
            )
            if removed.rowcount == 1:
                await conn.execute(
                    update(webhook_deliveries)
                    .where((_D.endpoint_id == endpoint_id) & (_D.state == _PENDING))
                    .values(state=DeliveryState.FAILED.value, finished_at=now, last_error="endpoint removed")
                )
            return removed.rowcount

        if await self._db.writes.run(write) != 1:
            raise NotFoundError("webhook endpoint", endpoint_id)

    async def tenant_secret(self, tenant: str) -> str:
        """The secret the tenant's batch webhooks are signed with (made now if it has none yet)."""
        now = self._db.now()
        insert = self._db.insert_ignoring_duplicates(webhook_secrets)

        async def write(conn: AsyncConnection) -> str:
            await conn.execute(insert.values(tenant=tenant, secret=new_secret(), created_at=now))
            query = select(webhook_secrets.c.secret).where(webhook_secrets.c.tenant == tenant)
            return str((await conn.execute(query)).scalar_one())

        return await self._db.writes.run(write)

    # -- the sender's side ------------------------------------------------------------------------

    async def claim_due(self, *, now: datetime, lease_s: float, limit: int) -> list[Claimed]:
        """Claim up to `limit` pending deliveries due at `now`, each for its next attempt.

        The claim moves `next_attempt_at` to the end of the lease: a second claimer (another
        worker's UPDATE, re-checked by PostgreSQL on the row it waited for) no longer sees it due.
        """
        due = (
            select(_D.id)
            .where((_D.state == _PENDING) & (_D.next_attempt_at <= now))
            .order_by(_D.next_attempt_at)
            .limit(limit)
        )
        claim = (
            update(webhook_deliveries)
            .where(_D.id.in_(due.scalar_subquery()) & (_D.state == _PENDING) & (_D.next_attempt_at <= now))
            .values(attempts=_D.attempts + 1, next_attempt_at=now + timedelta(seconds=lease_s))
            .returning(_D.id, _D.attempts, _D.url, _D.event_id, _D.body, _D.endpoint_id, _D.tenant)
        )

        def write(conn: Connection) -> list[Any]:  # plain: a worker's groups stay on the writer thread
            return list(conn.execute(claim).all())

        rows = await self._db.writes.run_sync(write)
        if not rows:
            return []
        secrets = await self._secrets({row.endpoint_id for row in rows})
        return [
            Claimed(row.id, row.attempts, row.url, row.event_id, row.body, secrets[row.endpoint_id])
            for row in rows
        ]

    async def _secrets(self, endpoint_ids: set[str]) -> dict[str, str]:
        query = (
            select(_E.id, _E.secret, webhook_secrets.c.secret.label("tenant_secret"))
            .select_from(webhook_endpoints.outerjoin(webhook_secrets, webhook_secrets.c.tenant == _E.tenant))
            .where(_E.id.in_(endpoint_ids))
        )
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return {row.id: row.secret or row.tenant_secret for row in rows}

    async def record(
        self, claimed: Claimed, attempt: DeliveryAttempt, *, state: DeliveryState, next_attempt_at: datetime
    ) -> None:
        """Record an attempt and move its delivery on (delivered, failed, or due again then).

        Only the claim of this attempt number moves the delivery; the attempt row is kept either way.
        """
        finished = None if state == DeliveryState.PENDING else self._db.now()
        row = {
            "delivery_id": claimed.id,
            "attempt_no": attempt.attempt_no,
            "started_at": attempt.started_at,
            "status_code": attempt.status_code,
            "error": attempt.error,
            "latency_ms": attempt.latency_ms,
            "response_excerpt": attempt.response_excerpt,
        }
        move = (
            update(webhook_deliveries)
            .where((_D.id == claimed.id) & (_D.attempts == claimed.attempt_no) & (_D.state == _PENDING))
            .values(
                state=state.value,
                next_attempt_at=next_attempt_at,
                finished_at=finished,
                last_status=attempt.status_code,
                last_error=attempt.error,
            )
        )
        insert = self._db.insert_ignoring_duplicates(webhook_attempts)

        def write(conn: Connection) -> None:  # plain, as the claim: the worker's deliverer writes it
            conn.execute(insert, row)
            conn.execute(move)

        await self._db.writes.run_sync(write)

    # -- reads and an admin's re-send -------------------------------------------------------------

    async def deliveries(
        self,
        *,
        tenant: TenantScope,
        batch_id: str | None = None,
        state: DeliveryState | None = None,
        limit: int = 50,
    ) -> list[Delivery]:
        """The tenant's deliveries, newest first, each with its attempts in order."""
        where = owned_by(_D.tenant, tenant)
        if batch_id is not None:
            where &= _D.batch_id == batch_id
        if state is not None:
            where &= _D.state == state.value
        query = select(webhook_deliveries).where(where).order_by(_D.created_at.desc(), _D.id).limit(limit)
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
            ids = [row.id for row in rows]
            tries = (
                await conn.execute(
                    select(webhook_attempts).where(_A.delivery_id.in_(ids)).order_by(_A.attempt_no)
                )
            ).all()
        by_delivery: dict[str, list[DeliveryAttempt]] = {}
        for t in tries:
            by_delivery.setdefault(t.delivery_id, []).append(_attempt(t._mapping))
        return [_delivery(row._mapping, by_delivery.get(row.id, [])) for row in rows]

    async def delivery(self, delivery_id: str, *, tenant: TenantScope) -> Delivery:
        """One delivery with its attempts.

        Raises:
            NotFoundError: no such delivery of this tenant.
        """
        query = select(webhook_deliveries).where((_D.id == delivery_id) & owned_by(_D.tenant, tenant))
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
            if row is None:
                raise NotFoundError("webhook delivery", delivery_id)
            tries = (
                await conn.execute(
                    select(webhook_attempts).where(_A.delivery_id == delivery_id).order_by(_A.attempt_no)
                )
            ).all()
        return _delivery(row._mapping, [_attempt(t._mapping) for t in tries])

    async def retry(self, delivery_id: str, *, tenant: TenantScope) -> Delivery:
        """Send a failed delivery again: pending and due now, for one more attempt.

        Raises:
            NotFoundError: no such delivery of this tenant.
            ValueError: it is not failed (pending ones are on their way, delivered ones arrived).
        """
        now = self._db.now()
        reopen = (
            update(webhook_deliveries)
            .where(
                (_D.id == delivery_id)
                & owned_by(_D.tenant, tenant)
                & (_D.state == DeliveryState.FAILED.value)
            )
            .values(state=_PENDING, next_attempt_at=now, finished_at=None)
        )

        async def write(conn: AsyncConnection) -> int:
            return (await conn.execute(reopen)).rowcount

        if await self._db.writes.run(write) != 1:
            current = await self.delivery(delivery_id, tenant=tenant)  # NotFoundError if none
            raise ValueError(
                f"webhook delivery {delivery_id} is {current.state.value}: only a failed one is sent again"
            )
        return await self.delivery(delivery_id, tenant=tenant)


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row["id"],
        tenant=row["tenant"],
        url=row["url"],
        events=[EventType(e) for e in row["events"]],
        created_at=aware(row["created_at"]) or row["created_at"],
        batch_id=row["batch_id"],
    )


def _attempt(row: Any) -> DeliveryAttempt:
    return DeliveryAttempt(
        attempt_no=row["attempt_no"],
        started_at=aware(row["started_at"]) or row["started_at"],
        latency_ms=row["latency_ms"],
        status_code=row["status_code"],
        error=row["error"],
        response_excerpt=row["response_excerpt"],
    )


def _delivery(row: Any, tries: list[DeliveryAttempt]) -> Delivery:
    return Delivery(
        id=row["id"],
        tenant=row["tenant"],
        endpoint_id=row["endpoint_id"],
        event_id=row["event_id"],
        event_type=EventType(row["event_type"]),
        batch_id=row["batch_id"],
        job_id=row["job_id"],
        url=row["url"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=aware(row["next_attempt_at"]) or row["next_attempt_at"],
        created_at=aware(row["created_at"]) or row["created_at"],
        finished_at=aware(row["finished_at"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        tries=tries,
    )
