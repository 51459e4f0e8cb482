"""How a deferred job goes back to the queue (`workers.worker.route_job`, on `JobDeferred`).

Every candidate was full: the job waits in the queue, not in a worker slot, until its turn.
"""

from __future__ import annotations

import logging
from typing import Any

from arq.constants import expires_extra_ms
from arq.utils import timestamp_ms
from redis.asyncio import Redis
from redis.exceptions import RedisError

from storage import keys
from storage.bus.queue import Deferrals
from workers.runner import JobDeferred

__all__ = ["keep_payload", "requeue"]

logger = logging.getLogger("routeq.worker")


async def requeue(
    deferrals: Deferrals, ctx: dict[str, Any], job_id: str, exc: JobDeferred, delay: float
) -> bool:
    """Re-queue a deferred job at its run time, its payload carrying its request (one Lua call).

    A delivery that was not a run gives its try back, so the next one has the same number; one that
    called a provider keeps it, and the payload says so (the next run is numbered after it even if
    arq's counter is lost).
    """
    run: int = ctx["job_try"]
    enqueued = ctx.get("enqueue_time")
    enqueued_ms = int(enqueued.timestamp() * 1000) if enqueued is not None else timestamp_ms()
    payload = None
    if exc.carry is not None:
        next_try = run if exc.given_back else run + 1
        payload = Deferrals.payload(job_id, exc.carry, job_try=next_try, enqueued_ms=enqueued_ms)
    try:
        await deferrals.defer(
            job_id,
            run_at_ms=timestamp_ms() + int(delay * 1000),
            payload=payload,
            give_back_try=run if exc.given_back else None,
        )
    except (RedisError, OSError) as exc_redis:  # arq's Retry(defer) moves the score instead
        logger.warning("could not re-queue deferred job %s: %s", job_id, exc_redis)
        return False
    return True


async def keep_payload(redis: Redis, job_id: str, defer_s: float) -> None:
    """Keep a deferred job's payload a day past its new run time, as arq's enqueue does.

    arq writes `arq:job:<id>` with a TTL of a day (`expires_extra_ms`) and a deferral does not touch
    it, so a job deferred for capacity over and over would lose its payload and be dropped.
    """
    ttl_ms = int(defer_s * 1000) + expires_extra_ms
    try:
        await redis.pexpire(keys.ARQ_JOB_PREFIX + job_id, ttl_ms)
    except (RedisError, OSError) as exc:  # the sweeper re-queues the job if the payload does expire
        logger.warning("could not extend job %s's payload: %s", job_id, exc)
