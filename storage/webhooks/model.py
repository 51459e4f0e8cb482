"""The webhooks' vocabulary: event types, delivery states, endpoints, deliveries and their attempts.

    batch.completed  a batch finished with at least one job answered (the counts say how many failed)
    batch.failed     a batch finished with no job answered while some failed: every line failed or
                     was invalid, or the batch expired before any was answered
    job.failed       a job failed for good (after its retries and failovers); not the jobs of an
                     expired batch (batch.failed says it) nor cancelled ones

A tenant's endpoints get the batch events of batches (files, Batch API), not of the batches of one
that single chat completions and jobs are; a URL given with one batch gets all three of its events.

An event's id is derived from its type and subject (`event_id`), so a finishing job delivered twice
names the same event, which the outbox keeps once per endpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from router_core.errors import InvalidRequestError

__all__ = [
    "Delivery",
    "DeliveryAttempt",
    "DeliveryState",
    "Endpoint",
    "EventType",
    "check_events",
    "check_url",
    "event_body",
    "event_id",
]

MAX_URL_CHARS = 2048


class EventType(StrEnum):
    BATCH_COMPLETED = "batch.completed"
    BATCH_FAILED = "batch.failed"
    JOB_FAILED = "job.failed"


class DeliveryState(StrEnum):
    PENDING = "pending"  # due at next_attempt_at (again after a failed attempt)
    DELIVERED = "delivered"  # an attempt got a 2xx
    FAILED = "failed"  # gave up after the last attempt (an admin may send it again)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a tenant's events go. `secret` is set only on the one returned at creation."""

    id: str
    tenant: str
    url: str
    events: list[EventType]
    created_at: datetime
    batch_id: str | None = None  # a batch's own URL: only that batch's events
    secret: str | None = None

    def view(self) -> dict[str, Any]:
        shown = {
            "id": self.id,
            "url": self.url,
            "events": [e.value for e in self.events],
            "batch_id": self.batch_id,
            "created_at": self.created_at.isoformat(),
        }
        return shown | ({"secret": self.secret} if self.secret is not None else {})


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One POST of a delivery: its HTTP status, or the error that stood for one."""

    attempt_no: int
    started_at: datetime
    latency_ms: float
    status_code: int | None = None
    error: str | None = None
    response_excerpt: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt_no,
            "started_at": self.started_at.isoformat(),
            "status_code": self.status_code,
            "error": self.error,
            "latency_ms": round(self.latency_ms, 1),
            "response_excerpt": self.response_excerpt,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one endpoint (an outbox row), with its attempts when read for a view."""

    id: str
    tenant: str
    endpoint_id: str
    event_id: str
    event_type: EventType
    batch_id: str
    job_id: str | None
    url: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    tries: list[DeliveryAttempt] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint_id": self.endpoint_id,
            "event_id": self.event_id,
            "type": self.event_type.value,
            "batch_id": self.batch_id,
            "job_id": self.job_id,
            "url": self.url,
            "state": self.state.value,
            "attempt_count": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat()
            if self.state == DeliveryState.PENDING
            else None,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "attempts": [t.view() for t in self.tries],
        }


def check_url(url: str, *, field: str = "url") -> str:
    """`url` if it can receive webhooks (http or https, with a host), else a clear error.

    Raises:
        InvalidRequestError: naming `field` and what is wrong.
    """
    url = url.strip()
    if not url or len(url) > MAX_URL_CHARS or any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidRequestError(
            f"{url[:80]!r} is not a webhook URL (empty, over {MAX_URL_CHARS} characters, or with spaces "
            "or control characters)",
            field=field,
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as exc:
        raise InvalidRequestError(f"{url!r} is not a valid URL: {exc}", field=field) from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidRequestError(
            f"{url!r}: a webhook URL must start with http:// or https:// (got {parts.scheme or 'no'} scheme)",
            field=field,
        )
    if not parts.hostname:
        raise InvalidRequestError(f"{url!r}: a webhook URL needs a host (https://host/path)", field=field)
    return url


def check_events(names: Iterable[str], *, field: str = "events") -> list[EventType]:
    """Event type names as `EventType`s (all of them for none); a clear error for an unknown one."""
    known = [e.value for e in EventType]
    chosen: list[EventType] = []
    for name in names:
        if name not in known:
            raise InvalidRequestError(f"unknown event type {name!r} (one of {', '.join(known)})", field=field)
        if EventType(name) not in chosen:
            chosen.append(EventType(name))
    return chosen or list(EventType)


def event_id(event_type: EventType, subject: str) -> str:
    """The event's id (`webhook-id`): the same for the same type and subject, whoever writes it."""
    digest = hashlib.sha256(f"{event_type.value}:{subject}".encode()).hexdigest()[:32]
    return f"msg_{digest}"


def event_body(event_type: EventType, timestamp: datetime, data: dict[str, Any]) -> str:
    """The JSON body sent on every attempt: {"type", "timestamp", "data"}."""
    document = {"type": event_type.value, "timestamp": timestamp.isoformat(), "data": data}
    return json.dumps(document, separators=(",", ":"), default=str)
