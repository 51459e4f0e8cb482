"""One failure vocabulary: the worker's error → FailureCode → `jobs.error` → the API's status and code."""

from __future__ import annotations

import pytest

from producer.api.chat import job_failure
from producer.api.errors import FAILURE_STATUS
from producer.outputs import output_line
from router_core.errors import (
    AllAttemptsFailedError,
    BudgetExceededError,
    CapacityExhaustedError,
    ConfigError,
    InvalidRequestError,
    NoRouteError,
    RouteqError,
    StreamInterruptedError,
)
from router_core.models import Attempt, AttemptOutcome
from storage.jobs import FailureCode, JobFailure, JobRecord, JobStatus
from storage.sql.runs import outcome_values


def test_every_failure_code_has_one_http_status() -> None:
    assert set(FAILURE_STATUS) == set(FailureCode)
    assert FAILURE_STATUS[FailureCode.BUDGET_EXCEEDED] == 402
    assert FAILURE_STATUS[FailureCode.JOB_TIMEOUT] == 504
    assert FAILURE_STATUS[FailureCode.CANCELLED] == 409


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BudgetExceededError("cap", [], ["user u"]), FailureCode.BUDGET_EXCEEDED),
        (AllAttemptsFailedError("all failed", []), FailureCode.ALL_ATTEMPTS_FAILED),
        # A subclass with no code of its own takes its nearest parent's.
        (CapacityExhaustedError("full", [], retry_after_s=1.0), FailureCode.ALL_ATTEMPTS_FAILED),
        (NoRouteError("no route"), FailureCode.NO_ROUTE),
        (InvalidRequestError("bad"), FailureCode.INVALID_REQUEST),
        (StreamInterruptedError("cut", []), FailureCode.STREAM_INTERRUPTED),
        (ConfigError("bad catalog"), FailureCode.ROUTING_FAILED),
    ],
)
def test_a_routing_error_maps_to_its_code(error: RouteqError, code: FailureCode) -> None:
    failure = JobFailure.from_exception(error)
    assert failure.code is code
    assert failure.message == str(error)


def test_the_stored_shape_reads_back_and_an_unknown_code_is_unknown() -> None:
    failure = JobFailure(FailureCode.BATCH_EXPIRED, "window ended")
    assert failure.as_json() == {"type": "batch_expired", "message": "window ended"}
    assert JobFailure.from_json(failure.as_json()) == failure
    assert JobFailure.from_json({"type": "SomethingNewError", "message": "m"}).code is FailureCode.UNKNOWN


def _failed_job(error: dict[str, str], status: JobStatus = JobStatus.FAILED) -> JobRecord:
    from datetime import UTC, datetime  # noqa: PLC0415

    return JobRecord(
        id="job_1", batch_id="batch_1", seq=0, custom_id="q1", tenant="t", user_id="u", status=status,
        request={}, stream=False, run=1, starts=1, worker=None, deployment=None, model=None, cost_usd=None,
        latency_ms=None, attempt_count=2, failovers=1, result=None, error=error,
        created_at=datetime.now(UTC), started_at=None, finished_at=None,
    )  # fmt: skip


def test_the_api_and_the_output_file_say_the_same_code() -> None:
    message = "user u: spent $1 of cap $1"
    job = _failed_job({"type": "BudgetExceededError", "message": message})
    answer = job_failure(job)
    assert (answer.status, answer.code, answer.message) == (402, "BudgetExceededError", message)
    assert output_line(job)["error"] == {"code": "BudgetExceededError", "message": message}
    cancelled = _failed_job(JobFailure(FailureCode.CANCELLED, "cancelled").as_json(), JobStatus.CANCELLED)
    assert job_failure(cancelled).status == 409


def _attempt(deployment: str) -> Attempt:
    return Attempt(deployment=deployment, provider="p", model="m", outcome=AttemptOutcome.ERROR)


def test_a_failed_job_counts_failovers_as_deployment_switches() -> None:
    """One failover count for succeeded and failed jobs: A → B → A is two switches."""
    from datetime import UTC, datetime  # noqa: PLC0415

    attempts = [_attempt("a"), _attempt("b"), _attempt("a")]
    failure = JobFailure(FailureCode.ALL_ATTEMPTS_FAILED, "every call failed")
    values = outcome_values(attempts, None, failure, [], datetime.now(UTC))
    assert values["failovers"] == 2
    assert values["error"] == failure.as_json()
