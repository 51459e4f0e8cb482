"""What a worker does with one delivered job: start it, route it, persist, then publish.

    start_job   UPDATE jobs SET status='running' ... RETURNING request   (skips cancelled/finished)
    route       Router.complete: plan, call, retry, fail over; every attempt recorded
    finish_job  one transaction: outcome (if still open) + attempts + ledger (ON CONFLICT DO NOTHING)
    publish     Lua: terminal event once per job, batch progress, batch.completed

arq delivers at least once. A redelivery after the commit finds the job finished and only
re-publishes (a no-op if the event is already out); a concurrent duplicate run records its own
attempts and charges (the provider billed them) but cannot overwrite the first result.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from router_core.errors import AllAttemptsFailedError, InvalidRequestError, NoRouteError, RouteqError
from router_core.models import Attempt, ChatRequest, CompletionResult
from router_core.router import Router
from storage.events import EventBus, JobEvent
from storage.records import JobRecord, StartedJob
from storage.store import JobFailure, Store
from storage.tables import JobStatus

__all__ = ["JobRunner"]

logger = logging.getLogger("routeq.worker")


class JobRunner:
    """Runs routeq jobs with one router, store and event bus (built once per worker process)."""

    def __init__(
        self,
        router: Router,
        store: Store,
        events: EventBus,
        *,
        worker_id: str,
        max_tries: int = 5,
        route_timeout_s: float | None = None,
    ) -> None:
        self.router = router
        self.store = store
        self.events = events
        self.worker_id = worker_id
        self.max_tries = max_tries
        # Routing must end before arq's job timeout cancels the whole job: a job cancelled there
        # would stay `running` in SQL. The rest of the timeout is left for persisting the outcome.
        self.route_timeout_s = route_timeout_s

    async def run(self, job_id: str, *, run: int) -> str:
        """Process one delivery of `job_id` (arq try number `run`); returns the job's final status."""
        started = await self.store.start_job(job_id, run=run, worker=self.worker_id)
        if isinstance(started, JobRecord):
            # Already finished (a redelivery after commit) or cancelled: make sure its event is out.
            if started.terminal:
                await self._publish(JobEvent.from_record(started))
            logger.info("job %s not run again: it is %s", job_id, started.status.value)
            return started.status.value

        if run > self.max_tries:
            # Every earlier delivery died without finishing (worker crashes, outages): stop here.
            result: CompletionResult | None = None
            attempts: list[Attempt] = []
            failure: JobFailure | None = JobFailure(
                "MaxTriesExceeded", f"gave up after {run - 1} deliveries that did not finish"
            )
        else:
            result, attempts, failure = await self._route(started)
        applied = await self.store.finish_job(
            started, run=run, attempts_made=attempts, result=result, failure=failure
        )
        if not applied:
            # A concurrent duplicate finished first: publish what SQL holds, not what we got.
            record = await self.store.get_job(job_id)
            await self._publish(JobEvent.from_record(record))
            return record.status.value
        event = _event_from_run(started, result, attempts, failure)
        await self._publish(event)
        return event.status

    async def _route(
        self, job: StartedJob
    ) -> tuple[CompletionResult | None, list[Attempt], JobFailure | None]:
        try:
            request = ChatRequest.model_validate(job.request)
        except ValidationError as exc:
            return None, [], JobFailure("InvalidRequestError", f"stored request is invalid: {exc}")
        try:
            async with asyncio.timeout(self.route_timeout_s):
                result = await self.router.complete(request)
        except TimeoutError:
            message = f"routing did not finish within {self.route_timeout_s:g}s (ROUTEQ_JOB_TIMEOUT_S)"
            return None, [], JobFailure("JobTimeoutError", message)
        except (AllAttemptsFailedError, NoRouteError, InvalidRequestError) as exc:
            made = exc.attempts if isinstance(exc, AllAttemptsFailedError) else []
            return None, made, JobFailure(type(exc).__name__, str(exc))
        except RouteqError as exc:  # any other routing error fails the job with its message
            return None, [], JobFailure(type(exc).__name__, str(exc))
        return result, result.attempts, None

    async def _publish(self, event: JobEvent) -> None:
        counts = await self.events.publish_terminal([event])
        if counts is not None and counts.complete:
            await self.store.mark_batch_completed(event.batch_id)


def _event_from_run(
    job: StartedJob, result: CompletionResult | None, attempts: list[Attempt], failure: JobFailure | None
) -> JobEvent:
    billed = sum(a.cost_usd for a in attempts)
    if result is not None:
        return JobEvent(
            job.id,
            job.batch_id,
            job.custom_id,
            JobStatus.SUCCEEDED.value,
            deployment=result.deployment,
            cost_usd=billed,
            latency_ms=result.latency_ms,
        )
    return JobEvent(
        job.id,
        job.batch_id,
        job.custom_id,
        JobStatus.FAILED.value,
        cost_usd=billed,
        error=failure.message if failure else None,
    )
