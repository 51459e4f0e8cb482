"""Plain records the store returns: what a job, a batch and a batch summary look like to callers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from storage.tables import TERMINAL, JobStatus

__all__ = ["BatchRecord", "BatchSummary", "DeploymentSummary", "JobRecord", "StartedJob", "aware"]


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time routeq stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class StartedJob:
    """A job a worker has just moved to `running`: what it needs to route and to bill."""

    id: str
    batch_id: str
    custom_id: str
    tenant: str
    user_id: str
    request: dict[str, Any]
    starts: int = 1  # deliveries that started routing, this one included
    stream: bool = False  # relay the text through Redis as it arrives (chat completions, stream=true)


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    batch_id: str
    seq: int
    custom_id: str
    tenant: str
    user_id: str
    status: JobStatus
    request: dict[str, Any]
    stream: bool
    run: int
    starts: int
    worker: str | None
    deployment: str | None
    model: str | None
    cost_usd: Decimal | None
    latency_ms: float | None
    attempt_count: int | None
    failovers: int | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> JobRecord:
        values = dict(row)
        values["status"] = JobStatus(values["status"])
        for name in ("created_at", "started_at", "finished_at"):
            values[name] = aware(values[name])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    kind: str
    tenant: str
    user_id: str
    name: str | None
    total: int
    budget_usd: Decimal | None
    invalid_lines: list[dict[str, Any]]
    created_at: datetime
    completed_at: datetime | None
    cancelled_at: datetime | None
    # Batches made through the OpenAI Batch API (POST /v1/batches) also carry these:
    endpoint: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completion_window: str | None = None
    expires_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    counts: dict[JobStatus, int] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], counts: dict[JobStatus, int]) -> BatchRecord:
        values = dict(row)
        for name in ("created_at", "completed_at", "cancelled_at", "expires_at"):
            values[name] = aware(values[name])
        return cls(**values, counts=counts)

    @property
    def done(self) -> int:
        return sum(n for status, n in self.counts.items() if status in TERMINAL)

    @property
    def status(self) -> str:
        """queued, in_progress, completed, or cancelled (cancel asked and nothing left to run)."""
        if self.done >= self.total:
            return "cancelled" if self.cancelled_at is not None else "completed"
        if self.counts.get(JobStatus.QUEUED, 0) == self.total:
            return "queued"
        return "in_progress"


@dataclass(frozen=True, slots=True)
class DeploymentSummary:
    deployment: str
    jobs: int
    cost_usd: Decimal
    p50_latency_ms: float
    p95_latency_ms: float
    failovers: int


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What `routeq run` prints at the end: succeeded jobs per deployment, failures, spend."""

    deployments: list[DeploymentSummary]
    succeeded: int
    failed: int
    cancelled: int
    failovers: int
    billed_usd: Decimal  # every ledger charge of the batch, failed runs included
    provider_calls: int
    failure_reasons: dict[str, int]
