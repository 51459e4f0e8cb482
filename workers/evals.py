"""Automatic evaluations: a judge deployment grades a sampled share of answered jobs, as ordinary jobs.

Two halves, both run by the workers:

`EvalBeat` (one per worker, like the sweeper): every `eval_interval_s` one worker of the fleet, the
holder of the `routeq:evals:beat` lock, pages through the jobs answered since its cursor
(`routeq:evals:cursor`: succeeded, answered by a provider, not cache hits, not evaluation jobs
themselves), keeps those whose id hashes under `eval_sample_rate` (sha256: every worker and every
re-read picks the same ones), marks each (`routeq:evals:judged:<id>`, SET NX: sent once) and
submits one judge request per job (`router_core.judging.judge_request`, pinned to `eval_judge`,
no fallbacks) as a batch of kind "eval" of the job's tenant, user `EVAL_USER`. At most
`eval_batch` jobs a beat; the cursor stops at the last job looked at, so the rest wait a beat.

The cursor follows `finished_at` as each worker's clock wrote it: a job committed after the beat read
past its finish time (a commit racing the read, a worker's clock seconds behind) is not sampled.
Sampling is statistical, so a few missed jobs only thin the sample; they are never judged twice.

Why a beat with a lock rather than arq's `cron_jobs`: routeq's worker replaces arq's poll loop
(`RouteqWorker._poll_iteration`), which is where arq runs its cron; and the sweeper already shows
the pattern (a task per worker, one lock holder per interval, idempotent work), which survives a
worker dying mid-beat (the lock expires, the cursor was not moved past unsent jobs).

Why judge calls are jobs: they then go through everything a call goes through — planning, the
admission line, retries, attempts, the ledger, budget holds, events — with no second code path.
They are billed to the tenant's `eval:<tenant>` scope (`storage.fleet.budgets`), capped apart
from the users' traffic (`routeq budget set eval:acme 1.00`).

`VerdictRecorder` (the runner's `on_answer` hook): when a judge job succeeds, it reads the verdict
(`parse_verdict`) and records it as quality evidence for the graded job's deployment, counted under
the class the planner gives the graded prompt (`evidence_for`), with the ref
`<graded job id>:<judge>`: a redelivered judge job finds the evidence there and adds nothing. A
verdict that does not parse is logged and counts nothing (the judge job itself stays succeeded:
the judge was paid and answered).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from arq.connections import ArqRedis
from pydantic import ValidationError
from redis.asyncio import Redis

from router_core.catalog import Catalog
from router_core.errors import ConfigError
from router_core.judging import DEFAULT_RUBRIC, VerdictError, judge_request, parse_verdict
from router_core.models import ChatRequest
from router_core.quality import evidence_for
from storage import keys
from storage.bus.events import EventBus
from storage.bus.queue import carried_requests, enqueue_jobs
from storage.errors import NotFoundError
from storage.fleet.quality import FleetQuality
from storage.jobs import NewJob, StartedJob
from storage.settings import Settings
from storage.sql.evals import EVAL_USER, AnsweredJob, Cursor
from storage.sql.quality import ScoredAnswer
from storage.sql.store import Store
from workers.beat import Beat

__all__ = ["EVAL_OF", "EVAL_OF_DEPLOYMENT", "EvalBeat", "EvalTick", "VerdictRecorder", "sampled"]

logger = logging.getLogger("routeq.evals")

EVAL_OF = "routeq_eval_of"
"""Metadata of a judge job: the id of the job whose answer it grades."""
EVAL_OF_DEPLOYMENT = "routeq_eval_deployment"
"""Metadata of a judge job: the deployment that gave the graded answer."""

_PAGE = 500  # answered jobs read at a time
_HASH_SPAN = 2**64
# How long a closing worker lets a beat in progress finish before cancelling it.


def sampled(job_id: str, rate: float) -> bool:
    """Whether `job_id` is in the sampled share `rate`: the first 8 bytes of sha256(id) under it."""
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    draw = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big")
    return draw < rate * _HASH_SPAN


@dataclass(frozen=True, slots=True)
class EvalTick:
    """What one beat did: jobs looked at, jobs sent to the judge, the eval batches made."""

    examined: int = 0
    judged: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)


class EvalBeat(Beat):
    """Samples answered jobs and submits their judge requests, once per interval across the fleet."""

    name = "evaluation beat"

    def __init__(
        self,
        redis: Redis,
        store: Store,
        events: EventBus,
        catalog: Catalog,
        *,
        judge: str,
        sample_rate: float,
        rubric: str = DEFAULT_RUBRIC,
        interval_s: float,
        batch: int,
        queue_name: str,
        holder: str,
        carry_max_bytes: int = 4096,
    ) -> None:
        if judge not in catalog:
            raise ConfigError(
                f"ROUTEQ_EVAL_JUDGE names {judge!r}, which is not a deployment of the catalog "
                f"({', '.join(catalog)})",
                field="eval_judge",
            )
        super().__init__(redis, lock_key=keys.EVAL_BEAT, holder=holder, interval_s=interval_s)
        self._store = store
        self._events = events
        self.judge = catalog[judge]
        self.sample_rate = sample_rate
        self.rubric = rubric
        self._batch = batch
        self._queue_name = queue_name
        self._carry_max_bytes = carry_max_bytes

    @classmethod
    def from_settings(
        cls,
        redis: Redis,
        store: Store,
        events: EventBus,
        catalog: Catalog,
        settings: Settings,
        *,
        holder: str,
    ) -> EvalBeat | None:
        """The beat the settings ask for; None when evaluations are off (no judge, or rate 0)."""
        if settings.eval_judge is None or settings.eval_sample_rate <= 0:
            return None
        return cls(
            redis,
            store,
            events,
            catalog,
            judge=settings.eval_judge,
            sample_rate=settings.eval_sample_rate,
            rubric=settings.eval_rubric or DEFAULT_RUBRIC,
            interval_s=settings.eval_interval_s,
            batch=settings.eval_batch,
            queue_name=settings.queue_name,
            holder=holder,
            carry_max_bytes=settings.carry_request_max_bytes,
        )

    async def tick(self) -> EvalTick | None:
        """One beat, if this worker gets the lock; None when another worker holds it.

        The lock is left to expire after one interval, so the fleet beats about once per interval.
        """
        if not await self._take_lock():
            return None
        cursor = await self._cursor()
        chosen: list[AnsweredJob] = []
        examined = 0
        while len(chosen) < self._batch:
            page = await self._store.evals.answered(after=cursor, limit=_PAGE)
            for job in page:
                if len(chosen) >= self._batch:
                    break
                examined += 1
                cursor = job.cursor
                if job.content and sampled(job.id, self.sample_rate):
                    chosen.append(job)
            if len(page) < _PAGE:
                break
        fresh = await self._claim(chosen)
        batches = await self._submit(fresh)
        if cursor is not None:
            await self._redis.set(keys.EVAL_CURSOR, json.dumps([cursor[0].isoformat(), cursor[1]]))
        if fresh:
            logger.info(
                "sent %d answered jobs to judge %s (%d looked at)", len(fresh), self.judge.id, examined
            )
        return EvalTick(examined, [job.id for job in fresh], batches)

    async def _cursor(self) -> Cursor | None:
        raw = await self._redis.get(keys.EVAL_CURSOR)
        if raw is None:
            return None
        at, job_id = json.loads(raw)
        return (datetime.fromisoformat(at), str(job_id))

    async def _claim(self, chosen: Sequence[AnsweredJob]) -> list[AnsweredJob]:
        """The chosen jobs not sent to the judge before (SET NX of their mark, one round trip)."""
        if not chosen:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job in chosen:
                pipe.set(keys.eval_judged(job.id), self.judge.id, nx=True, ex=keys.EVAL_JUDGED_TTL_S)
            marked = await pipe.execute()
        return [job for job, new in zip(chosen, marked, strict=True) if new]

    async def _submit(self, fresh: Sequence[AnsweredJob]) -> list[str]:
        """One eval batch per tenant: a judge request per job, queued like any batch."""
        by_tenant: dict[str, list[NewJob]] = defaultdict(list)
        for job in fresh:
            try:
                question = ChatRequest.model_validate(job.request).messages
            except ValidationError as exc:  # a stored request routeq wrote itself: not expected
                logger.warning("job %s not judged: its stored request does not parse (%s)", job.id, exc)
                continue
            metadata = {EVAL_OF: job.id, EVAL_OF_DEPLOYMENT: job.deployment}
            request = judge_request(question, job.content, self.judge, rubric=self.rubric, metadata=metadata)
            by_tenant[job.tenant].append(NewJob(job.id, request))
        made = []
        for tenant, items in by_tenant.items():
            created = await self._store.batches.create(
                items, tenant=tenant, user_id=EVAL_USER, kind="eval", name=f"evals by {self.judge.id}"
            )
            await self._events.open_batch(created.batch_id, len(created.job_ids))
            carried = None
            if created.requests is not None and self._carry_max_bytes:
                carried = carried_requests(
                    created.batch_id, tenant, created.requests, max_bytes=self._carry_max_bytes
                )
            # The worker's pool is arq's; enqueue_jobs uses plain Redis commands on it.
            queue = cast(ArqRedis, self._redis)
            await enqueue_jobs(queue, created.job_ids, queue_name=self._queue_name, carried=carried)
            made.append(created.batch_id)
        return made


class VerdictRecorder:
    """The runner's `on_answer` hook: a succeeded judge job's verdict becomes quality evidence."""

    def __init__(self, store: Store, quality: FleetQuality) -> None:
        self._store = store
        self._quality = quality

    async def __call__(self, job: StartedJob, content: str) -> bool:
        """Record the verdict of `job` if it is a judge job; True when evidence was added.

        Not a judge job (any other user, no `routeq_eval_of` metadata): nothing. Infra errors
        propagate, so the job is delivered again and this runs again (the ref makes it once).
        """
        if job.user_id != EVAL_USER:
            return False
        metadata = job.request.get("metadata") or {}
        graded, deployment = metadata.get(EVAL_OF), metadata.get(EVAL_OF_DEPLOYMENT)
        judge = job.request.get("model")
        if not isinstance(graded, str) or not isinstance(deployment, str) or not isinstance(judge, str):
            return False
        try:
            score = parse_verdict(content)
        except VerdictError as exc:
            logger.warning("judge job %s (of job %s): %s; nothing recorded", job.id, graded, exc)
            return False
        try:
            record = await self._store.jobs.get(graded, tenant=job.tenant)
            request = ChatRequest.model_validate(record.request)
        except (NotFoundError, ValidationError) as exc:
            logger.warning("judge job %s: the graded job %s cannot be read (%s)", job.id, graded, exc)
            return False
        answer = ScoredAnswer(
            "judge",
            f"{graded}:{judge}",
            evidence_for(request, deployment, score),
            tenant=job.tenant,
            job_id=graded,
        )
        return bool(await self._quality.record([answer]))
