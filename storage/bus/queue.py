"""The queue format producer and workers share: arq's job layout, a JSON serializer, bulk enqueue.

A queued job carries only its routeq job id; the request itself lives in SQL. Jobs are serialized
as JSON, not arq's default pickle, so whoever can write to Redis cannot make a worker run code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.constants import expires_extra_ms
from arq.jobs import serialize_job

from storage import keys

__all__ = ["JOB_FUNCTION", "deserialize", "enqueue_jobs", "serialize"]

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
    now_ms = int(time.time() * 1000)
    for start in range(0, len(job_ids), _ENQUEUE_CHUNK):
        chunk = job_ids[start : start + _ENQUEUE_CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                payload = serialize_job(JOB_FUNCTION, (job_id,), {}, None, now_ms, serializer=serialize)
                pipe.psetex(keys.ARQ_JOB_PREFIX + job_id, expires_extra_ms, payload)
            # Queue entries go in after their job keys: a worker never sees an id without its payload.
            pipe.zadd(queue_name, dict.fromkeys(chunk, now_ms), nx=keep_scheduled)
            await pipe.execute()
