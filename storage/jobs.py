"""The job vocabulary every room shares, with no I/O: statuses, failure codes, what goes in, what comes out.

    NewJob ──► (SQL) ──► StartedJob ──► JobFailure | result ──► JobRecord / BatchRecord / BatchSummary

Strings appear only where these cross a wire or a SQL column.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any, Final, NamedTuple, TypeAlias

from router_core.errors import (
    AllAttemptsFailedError,
    BudgetExceededError,
    InvalidRequestError,
    NoRouteError,
    RouteqError,
    StreamInterruptedError,
)
from router_core.models import ChatRequest

__all__ = [
    "ANY_TENANT",
    "SINGLE",
    "TERMINAL",
    "AnyTenant",
    "ApiBatch",
    "BatchLimits",
    "BatchRecord",
    "BatchSummary",
    "CancelledJob",
    "CreatedBatch",
    "DeploymentSummary",
    "EncodedJob",
    "EncodedJobs",
    "FailureCode",
    "FinishedJob",
    "IdempotencyKey",
    "InDoubtCall",
    "JobFailure",
    "JobRecord",
    "JobStatus",
    "NewJob",
    "StartedJob",
    "TenantScope",
    "aware",
    "encode_jobs",
    "new_id",
    "request_json",
]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

SINGLE = "single"
"""The `batches.kind` of a batch of one (`Client.submit`, a chat completion, `POST /v1/jobs`): it never
has a spend cap, a completion window or a webhook URL of its own, so its jobs take the light path
(no batch reads in the worker, no webhook event at its completion)."""


class AnyTenant(Enum):
    """The scope of a reader that sees every tenant: a worker, or an operator at the command line."""

    ANY = "any"


ANY_TENANT: Final = AnyTenant.ANY
# Every read of jobs and batches takes one: a tenant's name, or ANY_TENANT said out loud. A row of
# another tenant is then the same `NotFoundError` as a row that does not exist.
TenantScope: TypeAlias = str | AnyTenant


def new_id(prefix: str) -> str:
    """A random id such as `job_3f9c...`: 96 random bits, unguessable across tenants."""
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class NewJob:
    custom_id: str
    request: ChatRequest
    stream: bool = False  # relay the completion's text through Redis as it is generated


# -- new jobs encoded as their rows store them (`storage.sql.new_jobs` binds the rows) ------


class EncodedJob(NamedTuple):
    """A `NewJob` as its row stores it: the request serialized, its `user` and `metadata` copied out."""

    custom_id: str
    request: str  # JSON
    stream: bool
    end_user: str | None
    metadata: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class EncodedJobs:
    """New jobs encoded ahead (`encode_jobs`), e.g. in the thread that parsed them."""

    jobs: list[EncodedJob]

    def __len__(self) -> int:
        return len(self.jobs)


def encode_jobs(items: Iterable[NewJob]) -> EncodedJobs:
    """Serialize each request (`model_dump_json`, defaults left out): the CPU a new row costs."""
    return EncodedJobs(
        [
            EncodedJob(
                item.custom_id,
                request_json(item.request),
                item.stream,
                item.request.user,
                item.request.metadata,
            )
            for item in items
        ]
    )


def request_json(request: ChatRequest) -> str:
    """`request.model_dump_json(exclude_defaults=True)`, the same text, for less CPU.

    To leave a field out, pydantic compares it with its default, and a default made by a factory
    is made again for the comparison: `Preferences()` (with its `Weights()`) per request, most of
    the cost of the dump. Preferences (or weights) nobody set are their defaults (they are never
    changed after validation), so they are left out without the comparison.
    """
    given = request.preferences.model_fields_set
    if not given:
        return request.model_dump_json(exclude_defaults=True, exclude={"preferences"})
    if "weights" not in given:
        return request.model_dump_json(exclude_defaults=True, exclude={"preferences": {"weights"}})
    return request.model_dump_json(exclude_defaults=True)


@dataclass(frozen=True, slots=True)
class ApiBatch:
    """What a batch made through the OpenAI Batch API (`POST /v1/batches`) also records."""

    endpoint: str
    input_file_id: str
    completion_window: str
    expires_at: datetime
    metadata: dict[str, str] | None = None
    output_expires_s: int | None = None  # `output_expires_after`: its files expire this long after creation


@dataclass(frozen=True, slots=True)
class CreatedBatch:
    batch_id: str
    job_ids: list[str]
    replayed: bool = False  # made by an earlier request with the same idempotency key
    # Each new job's request as stored (JSON text) and their tenant: what their arq payloads may
    # carry (storage.bus.queue.carried_requests), so a worker admits a job before any SQL write.
    requests: list[str] | None = None
    tenant: str | None = None
    # A batch of one (`Client.submit`, a chat completion): no cap, no window, no webhook URL of its
    # own, so its payload says so and a worker reads none of them (storage.bus.queue.carried_request).
    single: bool = False


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's key for one request that creates work: the same key again gets the same batch.

    `fingerprint` identifies the request (route and body); `not_before` ends the retention window:
    a key recorded earlier is forgotten and may be used again.
    """

    key: str
    fingerprint: str
    not_before: datetime


@dataclass(frozen=True, slots=True)
class CancelledJob:
    """A job `Batches.cancel` moved from queued to cancelled: what its event needs, not the whole row."""

    id: str
    batch_id: str
    custom_id: str
    failure: JobFailure


@dataclass(frozen=True, slots=True)
class FinishedJob:
    """A finished job as its terminal event tells it: read without the request or the result."""

    id: str
    batch_id: str
    custom_id: str
    status: JobStatus
    deployment: str | None
    cost_usd: Decimal | None
    latency_ms: float | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What a worker checks before running a batch's job: its own cap, and when it expires."""

    budget_usd: float | None = None
    expires_at: datetime | None = None


class FailureCode(StrEnum):
    """Why a job did not succeed: one code carried from the worker through SQL to the API and CLI.

    The values are what `jobs.error.type` has always stored (the API's error `code` and the batch
    output's `error.code`), so rows written before this enum read back unchanged.
    """

    ALL_ATTEMPTS_FAILED = "AllAttemptsFailedError"  # every candidate deployment failed
    BUDGET_EXCEEDED = "BudgetExceededError"  # a spend cap leaves no room for the call
    NO_ROUTE = "NoRouteError"  # no deployment can serve the request's constraints
    INVALID_REQUEST = "InvalidRequestError"  # the request names something that does not exist
    STREAM_INTERRUPTED = "StreamInterruptedError"  # a streamed answer broke after its first piece
    JOB_TIMEOUT = "JobTimeoutError"  # routing outlived ROUTEQ_JOB_TIMEOUT_S
    MAX_TRIES_EXCEEDED = "MaxTriesExceeded"  # every delivery died without finishing
    BATCH_EXPIRED = "batch_expired"  # the batch's completion window ended first
    CANCELLED = "Cancelled"  # cancelled before it started
    ROUTING_FAILED = "RouteqError"  # any other routing error
    UNKNOWN = "Error"  # a stored code this version does not know

    @classmethod
    def of(cls, exc: RouteqError) -> FailureCode:
        """The code of a routing error: its nearest class in `_ERROR_CODES`."""
        for kind in type(exc).__mro__:
            if kind in _ERROR_CODES:
                return _ERROR_CODES[kind]
        return cls.ROUTING_FAILED

    @classmethod
    def parse(cls, value: object) -> FailureCode:
        """A stored code; one this version does not know reads as UNKNOWN."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.UNKNOWN


_ERROR_CODES: dict[type[RouteqError], FailureCode] = {
    BudgetExceededError: FailureCode.BUDGET_EXCEEDED,
    AllAttemptsFailedError: FailureCode.ALL_ATTEMPTS_FAILED,
    NoRouteError: FailureCode.NO_ROUTE,
    InvalidRequestError: FailureCode.INVALID_REQUEST,
    StreamInterruptedError: FailureCode.STREAM_INTERRUPTED,
}


@dataclass(frozen=True, slots=True)
class JobFailure:
    """Why a job failed: its code and a message that says what happened."""

    code: FailureCode
    message: str

    @classmethod
    def from_exception(cls, exc: RouteqError) -> JobFailure:
        return cls(FailureCode.of(exc), str(exc))

    def as_json(self) -> dict[str, str]:
        """The `jobs.error` column's shape."""
        return {"type": self.code.value, "message": self.message}

    @classmethod
    def from_json(cls, error: Mapping[str, Any]) -> JobFailure:
        return cls(FailureCode.parse(error.get("type")), str(error.get("message", "")))


@dataclass(frozen=True, slots=True)
class InDoubtCall:
    """A call a dead run reserved budget for and may have made: charged at the amount held."""

    run: int
    attempt_no: int
    deployment: str
    provider: str
    model: str
    cost_usd: float
    simulated: bool


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
    # The job is a batch of one (its payload said so): the worker reads no batch cap or window.
    single: bool = False


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
    end_user: str | None = None  # the request's `user`: the caller's end user
    metadata: dict[str, str] | None = None  # the request's `metadata`
    cache_key: str | None = None  # what changes the answer, hashed: set when the job used the cache
    cache_source: str | None = None  # a cache hit: the job whose provider answer it reused
    cache_similarity: float | None = None  # a semantic hit's similarity (None: exact)
    saved_usd: Decimal | None = None  # a hit: what its source's calls cost, not paid again
    api_key_id: str | None = None  # the API key that submitted it (None: the CLI or Python client)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def failure(self) -> JobFailure | None:
        """Why the job failed or was cancelled; None while it runs and once it succeeded."""
        if self.error is None or self.status is JobStatus.SUCCEEDED:
            return None
        return JobFailure.from_json(self.error)

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
    submitting: bool = False  # its file is still being submitted chunk by chunk: total not final
    # Batches made through the OpenAI Batch API (POST /v1/batches) also carry these:
    endpoint: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completion_window: str | None = None
    expires_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    deleted_at: datetime | None = None  # deleted by its tenant (only operators still read it)
    counts: dict[JobStatus, int] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], counts: dict[JobStatus, int]) -> BatchRecord:
        values = dict(row)
        for name in ("created_at", "completed_at", "cancelled_at", "expires_at", "deleted_at"):
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
    failure_reasons: dict[FailureCode, int]
    cache_jobs: int = 0  # finished jobs that used the response cache (looked an answer up or stored one)
    cache_hits: int = 0  # served from it: no provider call
    saved_usd: Decimal = Decimal(0)  # what the hits' source jobs paid: not paid again

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.cache_jobs if self.cache_jobs else 0.0
