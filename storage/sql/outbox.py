"""The webhooks' outbox: events written in the transaction that finishes a job or a batch.

    job_failed      in `runs.finish`'s transaction, when that run set the job `failed`
    batch_finished  in `batches.mark_completed`'s, when that call set `completed_at` (once)
    batch_url       in the transaction creating a batch: its webhook URL as an endpoint of its own

Each event goes to every endpoint of the tenant that takes its type (and to the batch's own URL),
as one `webhook_deliveries` row per endpoint, unique per (endpoint, event id): a job finished by
two deliveries of arq, or a batch marked complete twice, writes nothing the second time. The event
commits with the outcome or not at all, so no event is lost between the two. A tenant without
endpoints pays one indexed read per failed job and per finished batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select

from router_core.models import Attempt
from storage.jobs import FailureCode, JobFailure, JobStatus, StartedJob, aware, new_id
from storage.sql.engine import insert_ignoring
from storage.sql.schema import batches, jobs, webhook_deliveries, webhook_endpoints, webhook_secrets
from storage.webhooks.model import DeliveryState, EventType, event_body, event_id
from storage.webhooks.signing import new_secret

__all__ = ["batch_finished", "batch_url", "job_failed"]

_E = webhook_endpoints.c
# Failed jobs whose batch event tells it all: no job.failed of their own.
_NO_JOB_EVENT = (FailureCode.BATCH_EXPIRED, FailureCode.CANCELLED)


def job_failed(
    conn: Connection,
    job: StartedJob,
    *,
    failure: JobFailure,
    attempts_made: Sequence[Attempt],
    cost_usd: Decimal,
    now: datetime,
) -> int:
    """Write the `job.failed` event of a job this transaction failed; returns the deliveries added."""
    if failure.code in _NO_JOB_EVENT:
        return 0
    targets = _targets(conn, job.tenant, job.batch_id, EventType.JOB_FAILED)
    if not targets:
        return 0
    data = {
        "id": job.id,
        "object": "job",
        "batch_id": job.batch_id,
        "custom_id": job.custom_id,
        "status": JobStatus.FAILED.value,
        "error": failure.as_json(),
        "attempts": len(attempts_made),
        "deployments": list(dict.fromkeys(a.deployment for a in attempts_made)),
        "cost_usd": float(cost_usd),
        "user": job.user_id,
    }
    return _add(conn, targets, event_type=EventType.JOB_FAILED, subject=job.id, owner=job, data=data, now=now)


def batch_finished(conn: Connection, batch_id: str, now: datetime) -> int:
    """Write the batch's `batch.completed` or `batch.failed`; returns the deliveries added."""
    row = conn.execute(select(batches).where(batches.c.id == batch_id)).first()
    if row is None:
        return 0
    batch = row._mapping
    counts: dict[str, int] = dict(
        conn.execute(
            select(jobs.c.status, func.count()).where(jobs.c.batch_id == batch_id).group_by(jobs.c.status)
        ).all()
    )
    succeeded, failed = counts.get(JobStatus.SUCCEEDED.value, 0), counts.get(JobStatus.FAILED.value, 0)
    invalid = len(batch["invalid_lines"] or [])
    failed_batch = succeeded == 0 and (failed > 0 or invalid > 0)
    event_type = EventType.BATCH_FAILED if failed_batch else EventType.BATCH_COMPLETED
    # A single chat completion or job is a batch of one: its batch event goes to its own URL only.
    own_only = batch["kind"] != "batch"
    targets = _targets(conn, batch["tenant"], batch_id, event_type, own_only=own_only)
    if not targets:
        return 0
    cost = conn.execute(select(func.sum(jobs.c.cost_usd)).where(jobs.c.batch_id == batch_id)).scalar()
    expires = aware(batch["expires_at"])
    data = {
        "id": batch_id,
        "object": "batch",
        "status": "failed" if failed_batch else "completed",
        "name": batch["name"],
        "expired": expires is not None and now >= expires,
        "request_counts": {
            "total": batch["total"],
            "succeeded": succeeded,
            "failed": failed,
            "cancelled": counts.get(JobStatus.CANCELLED.value, 0),
            "invalid_lines": invalid,
        },
        "cost_usd": float(cost or 0),
        "metadata": batch["metadata"],
        "created_at": (aware(batch["created_at"]) or now).isoformat(),
        "completed_at": now.isoformat(),
    }
    owner = _Owner(batch["tenant"], batch_id)
    return _add(conn, targets, event_type=event_type, subject=batch_id, owner=owner, data=data, now=now)


def batch_url(conn: Connection, *, tenant: str, batch_id: str, url: str, now: datetime) -> None:
    """Register `url` (checked by the caller) for this batch's events, signed with the tenant's secret."""
    conn.execute(
        insert_ignoring(conn.dialect.name, webhook_secrets).values(
            tenant=tenant, secret=new_secret(), created_at=now
        )
    )
    conn.execute(
        webhook_endpoints.insert().values(
            id=new_id("whe"),
            tenant=tenant,
            url=url,
            secret=None,
            events=[e.value for e in EventType],
            batch_id=batch_id,
            created_at=now,
        )
    )


class _Owner:
    """What a batch event is filed under (a job event uses its `StartedJob`)."""

    def __init__(self, tenant: str, batch_id: str) -> None:
        self.tenant = tenant
        self.batch_id = batch_id
        self.id: str | None = None


def _targets(
    conn: Connection, tenant: str, batch_id: str, event_type: EventType, *, own_only: bool = False
) -> list[tuple[str, str]]:
    """(endpoint id, url) of the tenant's endpoints taking `event_type` for this batch (`own_only`:
    only the batch's own URL)."""
    scope = _E.batch_id == batch_id
    if not own_only:
        scope |= _E.batch_id.is_(None)
    query = select(_E.id, _E.url, _E.events).where((_E.tenant == tenant) & _E.removed_at.is_(None) & scope)
    rows = conn.execute(query).all()
    return [(row.id, row.url) for row in rows if event_type.value in (row.events or [])]


def _add(
    conn: Connection,
    targets: list[tuple[str, str]],
    *,
    event_type: EventType,
    subject: str,
    owner: StartedJob | _Owner,
    data: dict[str, Any],
    now: datetime,
) -> int:
    body = event_body(event_type, now, data)
    msg_id = event_id(event_type, subject)
    job_id = owner.id if isinstance(owner, StartedJob) else None
    rows = [
        {
            "id": new_id("whd"),
            "tenant": owner.tenant,
            "endpoint_id": endpoint_id,
            "event_id": msg_id,
            "event_type": event_type.value,
            "batch_id": owner.batch_id,
            "job_id": job_id,
            "url": url,
            "body": body,
            "state": DeliveryState.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for endpoint_id, url in targets
    ]
    result = conn.execute(insert_ignoring(conn.dialect.name, webhook_deliveries), rows)
    return max(result.rowcount, 0)
