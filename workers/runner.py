"""What a worker does with one delivered job: start it, route it, persist, settle, then publish.

    admit       (a job carrying its request) plan, ask the deployments' waiting lines for room
                (storage/fleet/line.py): none → wait in the worker for a near turn, else re-queued
                at its turn with no SQL write, its arq try given back (the delivery was no run)
    start_job   UPDATE jobs SET status='running', starts+1 ... RETURNING request (skips finished)
    recover     holds a dead earlier run left in Redis: charge them (estimated if unrecorded)
    route       Router.complete: plan, hold budget, admit, call, retry, fail over
    answer      the outcome and its attempts written ahead to Redis (routeq:answer:<job>)
    finish_job  one transaction: outcome (if still open) + attempts + ledger (ON CONFLICT DO NOTHING)
    settle      Lua: each hold of this run becomes the real cost in the budget counters
    publish     Lua: terminal event once per job, batch progress, batch.completed

When every candidate is full (rate limits, concurrency, breakers) the run records what it did, puts
the job back to `queued` and raises `JobDeferred`; the arq function turns that into a deferred retry,
so the job waits in the queue, not in a worker slot. With an admission line it takes a turn in the
line of the candidate that frees a slot first and comes back then, its request in its payload.

A commit that fails (a database or Redis blip) makes arq retry the job; the retry commits the
answer the failed run left in Redis as that run's, and calls no provider: a paid answer is kept.

arq delivers at least once. A redelivery after the commit finds the job finished and only
re-publishes (a no-op if the event is already out); a concurrent duplicate run records its own
attempts and charges (the provider billed them) but cannot overwrite the first result.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from router_core.errors import (
    AllAttemptsFailedError,
    CapacityExhaustedError,
    RouteqError,
    StreamInterruptedError,
)
from router_core.models import Attempt, ChatRequest, CompletionResult, Plan, deployment_switches
from router_core.planner import call_tokens
from router_core.router import Router
from router_core.spend import SpendGuard
from storage.bus.coalesce import Later, in_turn
from storage.bus.events import EventBus, JobEvent
from storage.bus.queue import carried_request, carries_single
from storage.bus.relay import StreamRelay
from storage.errors import NotFoundError
from storage.fleet.answers import AnswerStore, SavedAnswer
from storage.fleet.budgets import Budgets
from storage.fleet.line import AdmissionLine, Place
from storage.jobs import (
    ANY_TENANT,
    BatchLimits,
    FailureCode,
    InDoubtCall,
    JobFailure,
    JobRecord,
    JobStatus,
    StartedJob,
)
from storage.logs import bind_job_log, job_log_context
from storage.metrics import Metrics
from storage.sql.store import Store
from workers.cache import CacheUse, JobCache, hit_pieces
from workers.semantic import ShiftedGuard

__all__ = ["AnswerHook", "JobDeferred", "JobRunner"]

logger = logging.getLogger("routeq.worker")

AnswerHook = Callable[[StartedJob, str], Awaitable[object]]
"""Awaited with a succeeded job and its answer's text after its commit, and again on a redelivery of
a finished job (so it must be idempotent): the workers' evaluations read judge verdicts here."""


class JobDeferred(Exception):
    """Every candidate was full: run the job again after `delay_s` (the job is `queued` again).

    Attributes:
        carry: what the job's next delivery needs to ask for admission before SQL (request,
            tenant, batch); None when the request is too large to keep in Redis.
        given_back: the delivery was not a run (no call, no start kept): its arq try is given back.
    """

    def __init__(
        self,
        job_id: str,
        delay_s: float,
        reason: str,
        spread_s: float = 0.0,
        *,
        carry: dict[str, Any] | None = None,
        given_back: bool = False,
    ) -> None:
        self.delay_s = delay_s
        self.spread_s = spread_s
        self.carry = carry
        self.given_back = given_back
        super().__init__(f"job {job_id} deferred {delay_s:.3f}s: {reason}")


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A job admitted before its start: its request (from the payload) and plan."""

    plan: Plan
    request: ChatRequest
    claim: str | None = None  # the deployment it claimed a slot on, until admitted there
    ready_at: float = 0.0  # when that slot frees (router clock): the call is not admitted sooner


@dataclass(slots=True)
class _Outcome:
    result: CompletionResult | None = None
    attempts: list[Attempt] = field(default_factory=list)
    failure: JobFailure | None = None
    deferred: CapacityExhaustedError | None = None
    cache: CacheUse | None = None  # how the job used the response cache (None: it did not)
    plan: Plan | None = None  # the plan routed: recorded with the outcome, a deferral's candidates
    request: ChatRequest | None = None  # the request routed, validated (a deferral's turn sizes it)
    cache_ended: bool = False  # its flight let go with the commit's other Redis calls


class JobRunner:
    """Runs routeq jobs with one router, store and event bus (built once per worker process)."""

    def __init__(
        self,
        router: Router,
        store: Store,
        events: EventBus,
        *,
        worker_id: str,
        budgets: Budgets,
        max_tries: int = 5,
        route_timeout_s: float | None = None,
        simulated: frozenset[str] = frozenset(),
        relay: StreamRelay | None = None,
        metrics: Metrics | None = None,
        answers: AnswerStore | None = None,
        cache: JobCache | None = None,
        line: AdmissionLine | None = None,
        admission_wait_s: float = 0.0,
        carry_max_bytes: int = 4096,
        on_answer: AnswerHook | None = None,
    ) -> None:
        self.router = router
        self.on_answer = on_answer
        self.relay = relay or StreamRelay(events.redis)
        self.answers = answers or AnswerStore(events.redis)
        self.store = store
        self.events = events
        self.budgets = budgets
        self.worker_id = worker_id
        self.max_tries = max_tries
        self.simulated = simulated  # deployments served by the simulated world
        self._batch_limits: dict[str, BatchLimits] = {}
        # Routing must end before arq's job timeout cancels the whole job: a job cancelled there
        # would stay `running` in SQL. The rest of the timeout is left for persisting the outcome.
        self.route_timeout_s = route_timeout_s
        self.metrics = metrics  # None: this process keeps no metrics
        self.cache = cache  # None: no response cache (every job calls)
        self.line = line  # None: deferred jobs retry after the router's guess, through SQL each time
        self.admission_wait_s = admission_wait_s  # a turn this near is waited for here, not re-queued
        self.carry_max_bytes = carry_max_bytes  # a deferred job's payload carries a request this large

    async def run(self, job_id: str, *, run: int, carried: dict[str, Any] | None = None) -> str:
        """Process one delivery of `job_id` (arq try `run`); returns the job's final status.

        `carried`: the request (tenant, batch) a deferred job's payload carries: the job is admitted
        before its SQL start, or deferred to its turn without one. Every line logged meanwhile
        carries the job (and its batch, tenant and deployment once known: storage/logs.py).

        Raises:
            JobDeferred: every candidate is full for now; the job is (still) `queued`.
        """
        with job_log_context(job=job_id):
            status = await self._run(job_id, run=run, carried=carried)
            logger.debug("job %s run %d: %s", job_id, run, status)
            return status

    async def _run(self, job_id: str, *, run: int, carried: dict[str, Any] | None) -> str:
        admitted = None
        if carried is not None and self.line is not None:
            admitted = await self._admit(job_id, carried)
        started = await self.store.runs.start(job_id, run=run, worker=self.worker_id)
        bind_job_log(batch=started.batch_id, tenant=started.tenant)
        if isinstance(started, StartedJob) and carries_single(carried):
            started = replace(started, single=True)  # a batch of one: no batch reads
        if isinstance(started, JobRecord):
            await self._drop_claim(job_id, admitted, [])
            # Already finished (a redelivery after commit) or cancelled: record what earlier runs
            # were answered, settle what a dead run may have left, and make sure its event is out.
            await self._commit_answers(_started(started), run)
            await self._recover(_started(started), run)
            if started.terminal:
                await self._publish(JobEvent.from_record(started), stream=started.stream, run=run)
                await self._answered(_started(started), started.result)
            if started.status is JobStatus.CANCELLED:
                self._observe(JobStatus.CANCELLED.value, _Outcome())
            logger.info("job %s not run again: it is %s", job_id, started.status.value)
            return started.status.value
        if started.starts > 1:  # an earlier delivery started and never finished
            # Its commit failed after the providers answered: that answer, already paid for, is the
            # job's outcome; no provider is called again.
            answered = await self._commit_answers(started, run)
            await self._recover(started, run)  # or its worker died: charge the calls it held for
            if answered is not None:
                record = await self.store.jobs.get(job_id, tenant=ANY_TENANT)
                await self._publish(JobEvent.from_record(record), stream=started.stream, run=run)
                self._observe(record.status.value, answered)
                return record.status.value

        expired = await self._expired(started)
        if started.starts > self.max_tries:
            # Every earlier delivery died without finishing (worker crashes, outages): stop here.
            message = f"gave up after {started.starts - 1} deliveries that did not finish"
            outcome = _Outcome(failure=JobFailure(FailureCode.MAX_TRIES_EXCEEDED, message))
        elif expired is not None:
            outcome = _Outcome(failure=expired)
        else:
            outcome = await self._route(started, run, admitted)
        await self._drop_claim(job_id, admitted, outcome.attempts)
        try:
            return await self._conclude(started, run, outcome)
        finally:
            if self.cache is not None and not outcome.cache_ended:  # after the commit: waiters take it
                await self.cache.end(started, outcome.cache, answered=outcome.result is not None)

    async def _conclude(self, started: StartedJob, run: int, outcome: _Outcome) -> str:
        """Commit the run's outcome, settle its holds and publish; or put the job back (deferred)."""
        job_id = started.id
        routed = outcome.result or (outcome.attempts[-1] if outcome.attempts else None)
        bind_job_log(deployment=routed.deployment if routed is not None else None)
        if outcome.deferred is not None:
            await self.store.runs.defer(started, run=run, attempts_made=outcome.attempts)
            await self._settle(job_id, run, outcome.attempts)
            self._observe("deferred", outcome)
            raise await self._deferral(started, outcome)
        # The providers were paid: if the commit below fails, the retry commits this instead of paying again.
        answer = SavedAnswer(run, outcome.attempts, outcome.result, outcome.failure)
        written = bool(outcome.attempts) and await self.answers.save(job_id, answer)
        applied = await self.store.runs.finish(
            started,
            run=run,
            attempts_made=outcome.attempts,
            result=outcome.result,
            failure=outcome.failure,
            cache=outcome.cache.record() if outcome.cache is not None else None,
            plan=outcome.plan.model_dump(mode="json", exclude_defaults=True) if outcome.plan else None,
        )
        # Settle, forget the answer written ahead, publish, let the flight's waiters take the answer:
        # each call is queued as it is made, so they share one pipeline, run by Redis in this order.
        publish = []
        if applied:  # a batch of one was completed by the finish itself (`Runs.finish`), not here
            event = _event_from_run(started, outcome.result, outcome.attempts, outcome.failure)
            publish = [self._publish(event, stream=started.stream, run=run, completed=started.single)]
        forget = [self.answers.forget(job_id, [run])] if written else []
        ended = []
        if self.cache is not None:
            outcome.cache_ended = True
            ended = [self.cache.end(started, outcome.cache, answered=outcome.result is not None)]
        await in_turn([self._settle(job_id, run, outcome.attempts), *forget, *publish, *ended])
        status = (JobStatus.FAILED if outcome.result is None else JobStatus.SUCCEEDED).value
        self._observe(status, outcome)
        if not applied:
            # A concurrent duplicate finished first: publish what SQL holds, not what we got.
            record = await self.store.jobs.get(job_id, tenant=ANY_TENANT)
            await self._publish(JobEvent.from_record(record), stream=started.stream, run=run)
            return record.status.value
        if outcome.result is not None:
            await self._answered(started, {"content": outcome.result.content})
        return status

    async def _answered(self, job: StartedJob, result: dict[str, Any] | None) -> None:
        """Run the `on_answer` hook for a succeeded job (a failed one has no `result`)."""
        content = (result or {}).get("content")
        if self.on_answer is not None and isinstance(content, str) and result is not None:
            await self.on_answer(job, content)

    async def _admit(self, job_id: str, carried: dict[str, Any]) -> _Admitted | None:
        """Before the SQL start: the plan once a candidate has room (now or at a near turn), else
        `JobDeferred` to its turn.

        None leaves the job to the usual path (start, then route): a carried request that does not
        parse, a batch past its window (it fails at its start), a request with no route (it fails
        there too). A job that uses the response cache waits for its turn like any other: its cache
        lookup is a SQL read, which a job refused admission does not make; a hit is served at its
        turn (taking no slot)."""
        assert self.line is not None
        try:
            request = ChatRequest.model_validate_json(carried["request"])
            batch_id = str(carried["batch_id"])
        except (ValidationError, KeyError, TypeError):
            return None
        expires = (await self._limits(batch_id, carries_single(carried))).expires_at
        if expires is not None and datetime.now(UTC) >= expires:
            return None
        try:
            plan = await self.router.plan(request)
        except RouteqError:
            return None
        places = self._places(plan, request)
        if not places or places[0].unlimited:
            return _Admitted(plan, request)  # no limit to wait for: the router admits it at once
        turn = await self.line.wait_for_room(job_id, places, self.admission_wait_s, self.router.clock)
        if turn.room:
            # The deployment with room first: the ones before it are full, or their free slots are
            # the turns of jobs that waited longer (the router's admission does not see the line).
            first = [c for c in plan.candidates if c.deployment == turn.deployment]
            others = [c for c in plan.candidates if c.deployment != turn.deployment]
            ordered = plan.model_copy(update={"candidates": first + others})
            return _Admitted(ordered, request, turn.deployment, self.router.clock.now() + turn.ready_s)
        self._observe("deferred", _Outcome())
        reason = f"no candidate has room; its turn on {turn.deployment} comes first"
        raise JobDeferred(job_id, turn.delay_s, reason, carry=carried, given_back=True)

    async def _drop_claim(self, job_id: str, admitted: _Admitted | None, attempts: list[Attempt]) -> None:
        """Give back a claimed slot the job did not take (a cache hit, a finished job, a failover):
        an admission on that deployment took the claim out already."""
        if admitted is None or admitted.claim is None or self.line is None:
            return
        if not any(a.deployment == admitted.claim for a in attempts):
            await self.line.drop_claim(job_id, admitted.claim)

    async def _deferral(self, job: StartedJob, outcome: _Outcome) -> JobDeferred:
        """The `JobDeferred` of a run the router found full: its turn in the line, if there is one."""
        deferred = outcome.deferred
        assert deferred is not None
        delay, spread = deferred.retry_after_s + 0.01, deferred.spread_s
        if self.line is not None and outcome.plan is not None and outcome.plan.candidates:
            assert outcome.request is not None  # set with the plan
            places = self._places(outcome.plan, outcome.request)
            turn = await self.line.turn(job.id, places, check_room=False)
            # A turn about now means the line sees room the router did not get (a breaker, a race
            # lost to another worker): the router's guess then.
            if turn.delay_s > 0.01:
                delay, spread = turn.delay_s, 0.0
        # No call made: this delivery was not a run, and gives its number back.
        given_back = not outcome.attempts
        request = json.dumps(job.request, separators=(",", ":"))
        carry = carried_request(
            job.batch_id, job.tenant, request, max_bytes=self.carry_max_bytes, single=job.single
        )
        return JobDeferred(job.id, delay, str(deferred), spread, carry=carry, given_back=given_back)

    def _places(self, plan: Plan, request: ChatRequest) -> list[Place]:
        """The plan's candidates still in the (live) catalog as places in their lines, with their tokens."""
        places = []
        completion = request.max_tokens or plan.completion_tokens_estimate
        for dep in filter(None, (self.router.catalog.get(c.deployment) for c in plan.candidates)):
            prompt, most = call_tokens(dep, request, plan.prompt_tokens_estimate, completion)
            places.append(Place(dep, prompt + most))
        return places

    async def _commit_answers(self, job: StartedJob, run: int) -> _Outcome | None:
        """Commit the answers earlier runs got but did not commit; the outcome set, if one was.

        Each is written as the run that made it (its attempts and ledger rows keyed by that run, as
        its budget holds are), then its holds settle at the real cost. The first one committed while
        the job is open becomes its outcome, as if that run had committed it itself.
        """
        applied: _Outcome | None = None
        answers = await self.answers.saved(job.id, other_than=run)
        for answer in answers:
            outcome = _Outcome(answer.result, answer.attempts, answer.failure)
            committed = await self.store.runs.finish(
                job,
                run=answer.run,
                attempts_made=answer.attempts,
                result=answer.result,
                failure=answer.failure,
            )
            if committed and applied is None:
                applied = outcome
            await self._settle(job.id, answer.run, answer.attempts)
            logger.info("job %s: run %d committed run %d's answer, not asked again", job.id, run, answer.run)
        await self.answers.forget(job.id, [answer.run for answer in answers])
        return applied

    async def _route(self, job: StartedJob, run: int, admitted: _Admitted | None = None) -> _Outcome:
        plan = None
        if admitted is not None:  # planned and validated before the start (the same stored request)
            request, plan = admitted.request, admitted.plan
        else:
            try:
                request = ChatRequest.model_validate(job.request)
            except ValidationError as exc:
                message = f"stored request is invalid: {exc}"
                return _Outcome(failure=JobFailure(FailureCode.INVALID_REQUEST, message))
        guard = self.budgets.guard(
            job_id=job.id,
            run=run,
            tenant=job.tenant,
            user=job.user_id,
            batch_id=job.batch_id,
            batch_cap_usd=(await self._limits(job.batch_id, job.single)).budget_usd,
            end_user=request.user,  # the request's own end user: a scope of its own when named
        )
        use = await self.cache.begin(job, request, guard) if self.cache is not None else None
        embedded = [use.probe.attempt] if use is not None and use.probe is not None else []
        if use is not None and use.hit is not None:  # an earlier answer: no call, no hold
            if job.stream:
                await self._relay_pieces(job.id, run, hit_pieces(use.hit))
            return _Outcome(result=use.hit, attempts=embedded, cache=use)
        if admitted is not None and (wait := admitted.ready_at - self.router.clock.now()) > 0:
            await self.router.clock.sleep(wait)  # until its slot frees: the fleet would refuse it sooner
        # After an embedding call (attempt 1, semantic cache), the router's attempts come next.
        outcome = await self._call(
            job, run, request, ShiftedGuard(guard, len(embedded)) if embedded else guard, plan
        )
        outcome.attempts = embedded + outcome.attempts
        outcome.cache = use
        return outcome

    async def _call(
        self, job: StartedJob, run: int, request: ChatRequest, guard: SpendGuard, plan: Plan | None
    ) -> _Outcome:
        try:
            async with asyncio.timeout(self.route_timeout_s):
                # Planned here (the router would plan the same): it is recorded with the outcome, and
                # with an admission line a deferral takes a turn on its candidates.
                plan = plan or await self.router.plan(request)
                if job.stream:
                    result = await self._relay(job.id, run, request, guard, plan)
                else:
                    waiter = job.id if self.line is not None else None
                    result = await self.router.complete(request, plan=plan, guard=guard, waiter=waiter)
        except TimeoutError:
            message = f"routing did not finish within {self.route_timeout_s:g}s (ROUTEQ_JOB_TIMEOUT_S)"
            return _Outcome(failure=JobFailure(FailureCode.JOB_TIMEOUT, message), plan=plan)
        except CapacityExhaustedError as exc:
            return _Outcome(attempts=exc.attempts, deferred=exc, plan=plan, request=request)
        except (AllAttemptsFailedError, StreamInterruptedError) as exc:  # BudgetExceededError too
            attempts = [self._mark_simulated(a) for a in exc.attempts]
            return _Outcome(attempts=attempts, failure=JobFailure.from_exception(exc), plan=plan)
        except RouteqError as exc:  # NoRouteError, InvalidRequestError...: the job fails with the message
            return _Outcome(failure=JobFailure.from_exception(exc), plan=plan)
        return _Outcome(result=result, attempts=result.attempts, plan=plan)

    def _mark_simulated(self, attempt: Attempt) -> Attempt:
        """A cut-off stream's estimated charge cannot know whether the sim served it: the worker does."""
        if attempt.estimated and not attempt.simulated and attempt.deployment in self.simulated:
            return attempt.model_copy(update={"simulated": True})
        return attempt

    async def _relay(
        self, job_id: str, run: int, request: ChatRequest, guard: SpendGuard, plan: Plan | None
    ) -> CompletionResult:
        """Route as a stream, appending each text piece to the job's chunk stream as it arrives."""
        writer = self.relay.writer(job_id, run)
        try:
            waiter = job_id if self.line is not None else None
            async for part in self.router.stream(request, plan=plan, guard=guard, waiter=waiter):
                if isinstance(part, CompletionResult):
                    await writer.close()  # every piece is out before the outcome is committed
                    return part
                writer.add(part if isinstance(part, str) else part.choice)
        finally:
            await writer.abort()
        raise RuntimeError("Router.stream ended without its result")  # pragma: no cover

    async def _relay_pieces(self, job_id: str, run: int, pieces: list[str | dict[str, Any]]) -> None:
        """Relay a whole answer at once (a streamed job served from the cache)."""
        writer = self.relay.writer(job_id, run)
        try:
            for piece in pieces:
                writer.add(piece)
            await writer.close()
        finally:
            await writer.abort()

    async def _limits(self, batch_id: str, single: bool = False) -> BatchLimits:
        """The batch's cap and expiry (never changing: read once per worker); a batch of one has neither."""
        if single:
            return BatchLimits()
        if batch_id not in self._batch_limits:
            if len(self._batch_limits) > 10_000:
                self._batch_limits.clear()
            self._batch_limits[batch_id] = await self.store.batches.limits(batch_id)
        return self._batch_limits[batch_id]

    async def _expired(self, job: StartedJob) -> JobFailure | None:
        """A batch past its completion window runs no more of its jobs (OpenAI's `expired`)."""
        expires = (await self._limits(job.batch_id, job.single)).expires_at
        if expires is None or datetime.now(UTC) < expires:
            return None
        ended = f"{expires:%Y-%m-%d %H:%M:%S}Z"
        return JobFailure(FailureCode.BATCH_EXPIRED, f"the batch's completion window ended at {ended}")

    def _settle(self, job_id: str, run: int, attempts: list[Attempt]) -> Awaitable[int]:
        """After the ledger commit: this run's holds become the real cost (0 if not billed). Queued
        when called (storage/bus/coalesce.py), as `_publish` is."""
        charges = {f"{run}:{n}": a.cost_usd for n, a in enumerate(attempts, start=1)}
        return self.budgets.settle(job_id, charges)

    async def _recover(self, job: StartedJob, run: int | None, *, held_before: float | None = None) -> int:
        """Charge the calls of dead earlier runs (all but `run`): their holds are still in Redis.

        A hold whose call a committed run recorded is settled at its ledger cost (0 if the call was
        recorded unbilled). A hold no run recorded is a call a dead run was making: the provider may
        have billed it, so it is recorded as an `in_doubt` attempt charged at the amount held.
        `held_before` leaves younger holds alone. Returns how many holds were settled.
        """
        holds = {
            key: hold
            for key, hold in (await self.budgets.holds(job.id)).items()
            if hold.run != run and (held_before is None or hold.created <= held_before)
        }
        if not holds:
            return 0
        costs = {key: float(cost) for key, cost in (await self.store.ledger.recorded_calls(job.id)).items()}
        in_doubt = [hold for key, hold in holds.items() if key not in costs]
        if in_doubt:
            calls = [self._in_doubt_call(h.run, h.attempt_no, h.deployment, h.amount_usd) for h in in_doubt]
            await self.store.runs.record_in_doubt(job, calls)
            costs.update({hold.key: hold.amount_usd for hold in in_doubt})
            logger.warning("job %s: %d calls of a dead run charged as estimated", job.id, len(in_doubt))
        return await self.budgets.settle(job.id, {key: costs[key] for key in holds})

    async def settle_leftovers(self, job_id: str, *, held_before: float) -> int:
        """Settle the holds a finished job's runs left behind; returns how many (the sweeper's step).

        A run cut off between its ledger commit and its settle (arq's job timeout during a stalled
        database, a worker killed at that moment) is never delivered again once the job is finished,
        so nothing else would settle its holds and `reserved` would stay high for good. Holds taken
        after `held_before` are left to the run that may still own them.
        """
        try:
            record = await self.store.jobs.get(job_id, tenant=ANY_TENANT)
        except NotFoundError:
            return 0
        if not record.terminal:
            return 0  # its next run settles them (see `run`)
        return await self._recover(_started(record), None, held_before=held_before)

    def _observe(self, status: str, outcome: _Outcome) -> None:
        """Count this run (and every call it made) in the worker's metrics, if it keeps any."""
        if self.metrics is None:
            return
        result = outcome.result
        failovers = result.failovers if result is not None else deployment_switches(outcome.attempts)
        latency_ms = result.latency_ms if result is not None else None
        self.metrics.observe_job(status, outcome.attempts, failovers, latency_ms)
        use = outcome.cache
        if use is not None and status != "deferred":  # a deferred run is counted when it finishes
            saved = float(use.source.saved_usd) if use.source is not None else 0.0
            self.metrics.observe_cache(use.hit is not None, use.similarity, saved)

    def _in_doubt_call(self, run: int, attempt_no: int, deployment: str, amount: float) -> InDoubtCall:
        dep = self.router.catalog.get(deployment)
        return InDoubtCall(
            run=run,
            attempt_no=attempt_no,
            deployment=deployment,
            provider=dep.provider if dep else "unknown",
            model=dep.model if dep else "unknown",
            cost_usd=amount,
            simulated=deployment in self.simulated,
        )

    def _publish(
        self, event: JobEvent, *, stream: bool, run: int, completed: bool = False
    ) -> Awaitable[None]:
        """Publish a committed job's event; if it completed its batch, say so in SQL (unless
        `completed`). The event's script call is queued when this is called."""
        counting = self.events.publish_terminal([event])

        async def published() -> None:
            counts = await counting
            if counts is not None and counts.complete and not completed:
                await self.store.batches.mark_completed(event.batch_id)
            if stream:  # the API relaying this job's text stops reading here
                await self.relay.end(event.job_id, run, event.status)

        return Later(published)


def _event_from_run(
    job: StartedJob, result: CompletionResult | None, attempts: list[Attempt], failure: JobFailure | None
) -> JobEvent:
    billed = sum(a.cost_usd for a in attempts)
    job_key = (job.id, job.batch_id, job.custom_id)
    if result is not None:
        succeeded = JobStatus.SUCCEEDED.value
        return JobEvent(
            *job_key, succeeded, cost_usd=billed, deployment=result.deployment, latency_ms=result.latency_ms
        )
    error = failure.message if failure else None
    return JobEvent(*job_key, JobStatus.FAILED.value, cost_usd=billed, error=error)


def _started(job: JobRecord) -> StartedJob:
    return StartedJob(job.id, job.batch_id, job.custom_id, job.tenant, job.user_id, job.request, job.starts)
