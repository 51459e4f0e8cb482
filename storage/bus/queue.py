"""The queue format producer and workers share: arq's job layout, a JSON serializer, bulk enqueue.

A queued job carries only its routeq job id; the request itself lives in SQL. Jobs are serialized
as JSON, not arq's default pickle, so whoever can write to Redis cannot make a worker run code.

    enqueue_jobs   new jobs: payload + queue entry, pipelined
    orphans        which unfinished jobs nothing in Redis will run (no lease, no payload or entry)
    requeue_jobs   orphans back on the queue, their next arq try after the last one SQL recorded
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.constants import expires_extra_ms
from arq.jobs import serialize_job
from redis.asyncio import Redis

from storage import keys

__all__ = ["JOB_FUNCTION", "deserialize", "enqueue_jobs", "orphans", "requeue_jobs", "serialize"]

JOB_FUNCTION = "route_job"
# Ids per pipeline: large enough to amortise round trips, small enough to not block Redis for long.
_ENQUEUE_CHUNK = 2_000


def serialize(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def deserialize(raw: bytes) -> Any:
    return json.loads(raw)


async def enqueue_jobs(
    redis: ArqRedis, job_ids: Sequence[str], *, queue_name: str, keep_scheduled: bool = False
) -> None:
    """Put `job_ids` on the arq queue, one pipelined round trip per 2,000 jobs.

    arq's `enqueue_job` costs three round trips per job (WATCH, EXISTS, MULTI/EXEC) to dedupe ids;
    routeq's ids are fresh and workers are idempotent on the SQL status, so a pipeline of
    SET + ZADD writes the same keys arq would. `keep_scheduled`: an id already in the queue keeps
    its run-at time (ZADD NX), so re-queuing does not hurry a job deferred for capacity.
    """
    await _enqueue(redis, dict.fromkeys(job_ids), queue_name, keep_scheduled=keep_scheduled)


async def requeue_jobs(redis: Redis, last_runs: Mapping[str, int], *, queue_name: str) -> None:
    """Put jobs that were already delivered back on the queue; `last_runs` maps id -> `jobs.run`.

    arq numbers a job's tries in `arq:retry:<id>`, which it deletes when it drops a job (and which a
    Redis data loss takes too), so a re-queued job would start again at try 1 and its attempts and
    ledger rows, keyed by (job, run, attempt_no), would collide with the first run's and be lost
    (`ON CONFLICT DO NOTHING`). The payload's `job_try` makes arq number the next try after the
    last one SQL recorded.
    """
    await _enqueue(redis, {job_id: run + 1 for job_id, run in last_runs.items()}, queue_name)


async def _enqueue(
    redis: Redis, tries: Mapping[str, int | None], queue_name: str, *, keep_scheduled: bool = False
) -> None:
    now_ms = int(time.time() * 1000)
    job_ids = list(tries)
    for start in range(0, len(job_ids), _ENQUEUE_CHUNK):
        chunk = job_ids[start : start + _ENQUEUE_CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                payload = serialize_job(
                    JOB_FUNCTION, (job_id,), {}, tries[job_id], now_ms, serializer=serialize
                )
                pipe.psetex(keys.ARQ_JOB_PREFIX + job_id, expires_extra_ms, payload)
            # Queue entries go in after their job keys: a worker never sees an id without its payload.
            pipe.zadd(queue_name, dict.fromkeys(chunk, now_ms), nx=keep_scheduled)
            await pipe.execute()


async def orphans(redis: Redis, job_ids: Sequence[str], *, queue_name: str) -> list[str]:
    """Of `job_ids` (unfinished in SQL), those that nothing in Redis will ever run.

    A job some worker runs has a live lease (`arq:in-progress:<id>`, renewed while its worker
    lives); a job waiting to run (new, deferred, or retrying after an outage) has both its payload
    and its queue entry. A job with neither was dropped: arq's job timeout ended its run while a
    write of it was still queued for the database, its payload expired (a day) while it waited, or
    Redis lost its data. Checked in one round trip per 2,000 jobs, each chunk in one MULTI so a
    job cannot move between the checks; a job that finishes meanwhile is for the caller to re-read.
    """
    found: list[str] = []
    for start in range(0, len(job_ids), _ENQUEUE_CHUNK):
        chunk = job_ids[start : start + _ENQUEUE_CHUNK]
        async with redis.pipeline(transaction=True) as pipe:
            for job_id in chunk:
                pipe.exists(keys.ARQ_IN_PROGRESS_PREFIX + job_id)
                pipe.exists(keys.ARQ_JOB_PREFIX + job_id)
                pipe.zscore(queue_name, job_id)
            replies = await pipe.execute()
        for n, job_id in enumerate(chunk):
            leased, payload, score = replies[3 * n : 3 * n + 3]
            if not leased and not (payload and score is not None):
                found.append(job_id)
    return found
