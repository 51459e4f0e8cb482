"""The fleet's sweeper: finds jobs and batches nothing will finish, and hands them back.

arq drops a job in ways SQL never hears of: its job timeout ends the run (for good) while a write
of it is still queued for a stalled database, which lands `running` afterwards; its payload
(`arq:job:<id>`) expires after a day in the queue, deferrals included; Redis loses its data. The
job then stays `queued` or `running` in SQL with nothing that will run it. Every worker runs a
`Sweeper`; each beat (`sweep_interval_s`) one of them, the holder of the `routeq:sweeper` lock:

    1. pages through unfinished jobs created more than `sweep_min_age_s` ago (partial index
       `ix_jobs_unfinished`, 1,000 a page, oldest first)
    2. checks each page in Redis in one round trip: a live lease (`arq:in-progress:<id>`, renewed
       by the worker running it) or a payload with its queue entry means something will run it
    3. reads the rest again in SQL (a job finished meanwhile is left alone) and re-queues them,
       numbered after their last run (`storage.bus.recovery.requeue_orphans`)
    4. finishes batches all of whose jobs are finished but that are not marked complete: counts
       the jobs Redis has not counted (a terminal event a cancelled run never published, a lost
       progress hash) and marks them (`storage.bus.recovery.finish_batch`)
    5. settles the budget holds finished jobs left (`routeq:open-holds`, held since before the
       minimum age): a run cut off between its ledger commit and its settle is never delivered
       again, so without this its holds would keep `reserved` high for good
       (`JobRunner.settle_leftovers`)

A worker alive but slow keeps its lease, so its jobs are never taken; a dead worker's lease runs
out within `job_lease_s` and arq itself redelivers those (their payload and queue entry are
still there). Everything the sweeper does is idempotent, so a second sweeper (a lock that
expired mid-sweep) costs only work; `jobs.starts` and `max_tries` still bound a job that keeps
dying.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from storage import keys
from storage.bus.events import EventBus
from storage.bus.recovery import finish_batch, requeue_orphans
from storage.settings import Settings
from storage.sql.store import Store
from workers.beat import Beat
from workers.runner import JobRunner

__all__ = ["SweepReport", "Sweeper"]

logger = logging.getLogger("routeq.sweeper")

# Unfinished jobs read and checked at a time: one SQL page, one Redis round trip.
_PAGE = 1_000
# How long a closing worker lets a sweep in progress finish before cancelling it.

# KEYS[1] the lock; ARGV[1] its holder, ARGV[2] ms. Extends the lock only for its holder.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep did: jobs put back on the queue, batches marked complete, holds settled."""

    requeued: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)  # finished jobs whose leftover holds it settled


class Sweeper(Beat):
    """Re-queues orphaned jobs and finishes stuck batches, once per interval across the fleet."""

    name = "sweep"

    def __init__(
        self,
        redis: Redis,
        store: Store,
        events: EventBus,
        *,
        queue_name: str,
        holder: str,
        interval_s: float,
        min_age_s: float,
        runner: JobRunner | None = None,
    ) -> None:
        super().__init__(redis, lock_key=keys.SWEEPER, holder=holder, interval_s=interval_s)
        self._runner = runner  # settles finished jobs' leftover holds; None skips that step
        self._store = store
        self._events = events
        self._queue_name = queue_name
        self._min_age_s = min_age_s
        self._extend = redis.register_script(_EXTEND)

    @classmethod
    def from_settings(
        cls,
        redis: Redis,
        store: Store,
        events: EventBus,
        settings: Settings,
        *,
        holder: str,
        runner: JobRunner | None = None,
    ) -> Sweeper:
        return cls(
            redis,
            store,
            events,
            queue_name=settings.queue_name,
            holder=holder,
            interval_s=settings.sweep_interval_s,
            min_age_s=settings.sweep_min_age_s,
            runner=runner,
        )

    async def tick(self) -> SweepReport | None:
        return await self.sweep()

    async def sweep(self) -> SweepReport | None:
        """One sweep, if this worker gets the lock; None when another worker holds it.

        The lock is left to expire after one interval rather than released, so however many
        workers try, the fleet sweeps about once per interval.
        """
        if not await self._take_lock():
            return None
        cutoff = datetime.now(UTC) - timedelta(seconds=self._min_age_s)
        report = SweepReport()
        after: tuple[datetime, str] | None = None
        while True:
            page = await self._store.jobs.unfinished(created_before=cutoff, after=after, limit=_PAGE)
            if page:
                ids = [job_id for _, job_id in page]
                report.requeued.extend(
                    await requeue_orphans(self._redis, self._store, ids, queue_name=self._queue_name)
                )
            if len(page) < _PAGE or self._stopping.is_set() or not await self._still_held():
                break
            after = page[-1]
        for batch_id in await self._store.batches.finalizing(created_before=cutoff):
            if (await finish_batch(self._store, self._events, batch_id)).complete:
                report.completed.append(batch_id)
        if self._runner is not None:
            held_before = time.time() - self._min_age_s
            for job_id in await self._runner.budgets.open_since(held_before, limit=_PAGE):
                if await self._runner.settle_leftovers(job_id, held_before=held_before):
                    report.settled.append(job_id)
        if report.requeued or report.completed or report.settled:
            logger.warning(
                "sweeper re-queued %d orphaned jobs, completed %d stuck batches, settled the holds of %d",
                len(report.requeued),
                len(report.completed),
                len(report.settled),
            )
        return report

    async def _still_held(self) -> bool:
        """Push the lock's expiry back before the next page; False if another worker has it now."""
        return bool(await self._extend(keys=[keys.SWEEPER], args=[self._holder, self._lock_ms()]))
