"""The rows a job's run writes: its outcome on `jobs`, one `attempts` row per call, one `ledger`
row per billed call. Built here, written by `Store` in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from router_core.models import Attempt, CompletionResult
from storage.records import StartedJob
from storage.tables import JobStatus

__all__ = [
    "OUTCOME_COLUMNS",
    "JobFailure",
    "attempt_row",
    "billed_calls",
    "ledger_row",
    "money",
    "outcome_values",
    "run_rows",
]

# The columns a run's outcome sets on its job.
OUTCOME_COLUMNS = (
    "status",
    "finished_at",
    "attempt_count",
    "cost_usd",
    "deployment",
    "model",
    "latency_ms",
    "failovers",
    "result",
    "error",
)


@dataclass(frozen=True, slots=True)
class JobFailure:
    """Why a job failed: the exception class name and its message."""

    type: str
    message: str


def money(value: float) -> Decimal:
    """A router cost as the NUMERIC(20, 10) the ledger stores."""
    # Router costs are floats from genai-prices' Decimals; 10 decimal places is sub-nano-dollar.
    return Decimal(repr(value)).quantize(Decimal("1e-10"))


def outcome_values(
    attempts_made: Sequence[Attempt],
    result: CompletionResult | None,
    failure: JobFailure | None,
    billed: Sequence[tuple[int, Attempt]],
    now: datetime,
) -> dict[str, Any]:
    values: dict[str, Any] = dict.fromkeys(OUTCOME_COLUMNS)
    values.update(
        finished_at=now,
        attempt_count=len(attempts_made),
        cost_usd=sum((money(a.cost_usd) for _, a in billed), Decimal(0)),
    )
    if result is not None:
        values.update(
            status=JobStatus.SUCCEEDED.value,
            deployment=result.deployment,
            model=result.model,
            latency_ms=result.latency_ms,
            failovers=result.failovers,
            result=result.model_dump(mode="json", exclude={"attempts"}),
            error=None,
        )
    else:
        failure = failure or JobFailure("Error", "the job failed without an error message")
        values.update(
            status=JobStatus.FAILED.value,
            error={"type": failure.type, "message": failure.message},
            failovers=max(0, len({a.deployment for a in attempts_made}) - 1),
        )
    return values


def billed_calls(attempts_made: Sequence[Attempt]) -> list[tuple[int, Attempt]]:
    """(attempt_no, attempt) of the calls the provider billed: those that report usage or cost."""
    return [(n, a) for n, a in enumerate(attempts_made, start=1) if a.usage is not None or a.cost_usd > 0]


def run_rows(
    job: StartedJob,
    run: int,
    attempts_made: Sequence[Attempt],
    billed: Sequence[tuple[int, Attempt]],
    now: datetime,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's attempt rows (every call) and ledger rows (billed calls), numbered from 1."""
    attempt_rows = [attempt_row(job.id, run, n, a, now) for n, a in enumerate(attempts_made, start=1)]
    return attempt_rows, [ledger_row(job, run, n, a, now) for n, a in billed]


def attempt_row(job_id: str, run: int, number: int, attempt: Attempt, now: datetime) -> dict[str, Any]:
    usage = attempt.usage
    return {
        "job_id": job_id,
        "run": run,
        "attempt_no": number,
        "deployment": attempt.deployment,
        "provider": attempt.provider,
        "model": attempt.model,
        "outcome": attempt.outcome.value,
        "error_class": attempt.error_class,
        "error": attempt.error,
        "status_code": attempt.status_code,
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "latency_ms": attempt.latency_ms,
        "wait_ms": attempt.wait_ms,
        "simulated": attempt.simulated,
        "created_at": now,
    }


def ledger_row(job: StartedJob, run: int, number: int, attempt: Attempt, now: datetime) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "run": run,
        "attempt_no": number,
        "batch_id": job.batch_id,
        "tenant": job.tenant,
        "user_id": job.user_id,
        "deployment": attempt.deployment,
        "provider": attempt.provider,
        "model": attempt.model,
        "cost_usd": money(attempt.cost_usd),
        "usage": attempt.usage.model_dump() if attempt.usage else {},
        "simulated": attempt.simulated,
        "estimated": False,
        "created_at": now,
    }
