"""Rebuilding what Redis should hold for a batch from SQL, the source of truth.

    requeue_orphans   unfinished jobs nothing in Redis will run → back on the queue
    finish_batch      a batch's counters from its finished jobs; marked complete when they say so

Both are safe to repeat and to run while workers work: a re-queued job that finished meanwhile is
skipped by the worker that gets it (`store.runs.start`), and every count goes through the terminal
event script, whose per-job marker lets each job be counted once. `routeq requeue` (`Client.requeue`)
runs them for one batch; the fleet's sweeper (`workers/sweeper.py`) for whatever it finds stuck.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from storage.bus.events import BatchCounts, EventBus, JobEvent
from storage.bus.queue import orphans, requeue_jobs
from storage.jobs import ANY_TENANT
from storage.sql.store import Store

__all__ = ["finish_batch", "requeue_orphans"]


async def requeue_orphans(
    redis: Redis, store: Store, job_ids: Sequence[str], *, queue_name: str
) -> list[str]:
    """Re-queue those of `job_ids` (unfinished in SQL) that nothing in Redis will run; returns them.

    A job is an orphan when it has no live lease and not both a payload and a queue entry
    (`storage.bus.queue.orphans`). SQL is read again after Redis: a worker commits a job's outcome
    before arq removes its keys, so a job still unfinished there really was dropped.
    """
    found = await orphans(redis, job_ids, queue_name=queue_name)
    last_runs = await store.jobs.open_runs(found)
    await requeue_jobs(redis, last_runs, queue_name=queue_name)
    return sorted(last_runs)


async def finish_batch(store: Store, events: EventBus, batch_id: str) -> BatchCounts:
    """Count every finished job of the batch that Redis has not counted, then mark it complete if done.

    Restores a lost progress hash (Redis lost its data), and publishes the terminal event of a job
    whose run ended after its commit but before its publish (arq's job timeout cancelled it while
    the commit waited for a stalled database). Returns the batch's counters afterwards.
    """
    batch = await store.batches.get(batch_id, tenant=ANY_TENANT)
    finished = [JobEvent.from_record(job) async for job in store.jobs.finished(batch_id, tenant=ANY_TENANT)]
    counts = await events.restore(batch_id, batch.total, finished)
    # Only when SQL agrees: a job finishing after the read above is marked by its own worker.
    if counts.complete and len(finished) >= batch.total:
        await store.batches.mark_completed(batch_id)
    return counts
