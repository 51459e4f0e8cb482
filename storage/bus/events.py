"""Completion events: a Redis Stream per batch, plus a pub/sub ping per job for low latency.

Events are published only after the SQL commit they describe. One Lua script records a job's
terminal event, counts it in the batch progress hash and, when the batch is done, appends
`batch.completed` — atomically and at most once per job (a marker key guards it), so a redelivered
job or a second publish after a crash never produces a second terminal event or a double count.

Event types (the stream field `type`; `data` is JSON):
    job.succeeded / job.failed / job.cancelled   job_id, custom_id, batch_id, deployment, cost_usd...
    batch.progress                               total, done, succeeded, failed, cancelled (every 1%)
    batch.completed                              the same counts, once, when done == total
A subscriber that connects late or reconnects passes the last id it saw and misses nothing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json
from redis.asyncio import Redis

from storage import keys
from storage.bus.coalesce import BatchedScript, Later, in_turn, ready
from storage.bus.queue import BatchOpening
from storage.connections import as_text
from storage.jobs import CancelledJob, FinishedJob, JobRecord, JobStatus

__all__ = ["BatchCounts", "Event", "EventBus", "JobEvent"]

# KEYS: [1] stream, [2] progress hash, [3..] one "published" marker per job.
# ARGV: [1] retention seconds, [2] job-done channel prefix, [3] the batch's total to restore ('' when
# publishing), then per job: job_id, status, data JSON.
_PUBLISH_TERMINAL = """
local stream, progress = KEYS[1], KEYS[2]
local retention, channel_prefix = tonumber(ARGV[1]), ARGV[2]
local restored = ARGV[3] ~= '' and redis.call('HSETNX', progress, 'total', ARGV[3]) == 1
local completed = false
local function counts()
  local c = redis.call('HMGET', progress, 'total', 'done', 'succeeded', 'failed', 'cancelled')
  for i = 1, 5 do c[i] = tonumber(c[i] or '0') end
  return c
end
local function counts_json(c)
  return string.format('{"total":%d,"done":%d,"succeeded":%d,"failed":%d,"cancelled":%d}',
    c[1], c[2], c[3], c[4], c[5])
end
local added = 0
for i = 3, #KEYS do
  local base = 4 + (i - 3) * 3
  local job_id, status, data = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', retention) then
    added = added + 1
    redis.call('HINCRBY', progress, status, 1)
    local done = redis.call('HINCRBY', progress, 'done', 1)
    local id = redis.call('XADD', stream, '*', 'type', 'job.' .. status, 'data', data)
    redis.call('PUBLISH', channel_prefix .. job_id, id)
    local c = counts()
    local step = math.max(1, math.floor(c[1] / 100))
    if done % step == 0 or done == c[1] then
      redis.call('XADD', stream, '*', 'type', 'batch.progress', 'data', counts_json(c))
    end
    if done == c[1] then
      redis.call('XADD', stream, '*', 'type', 'batch.completed', 'data', counts_json(c))
      completed = true
    end
  end
end
local c = counts()
-- The total came back after the last job was counted (its publish found no total): complete now.
if restored and not completed and c[1] > 0 and c[2] >= c[1] then
  redis.call('XADD', stream, '*', 'type', 'batch.completed', 'data', counts_json(c))
end
redis.call('EXPIRE', stream, retention)
redis.call('EXPIRE', progress, retention)
return {added, c[1], c[2], c[3], c[4], c[5]}
"""
_CHANNEL_PREFIX = keys.job_done_channel("")
# Jobs per script call when cancelling a batch: keeps each call short for other clients.
_PUBLISH_CHUNK = 500


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A job's terminal outcome, as published."""

    job_id: str
    batch_id: str
    custom_id: str
    status: str  # succeeded | failed | cancelled
    deployment: str | None = None
    cost_usd: float = 0.0
    latency_ms: float | None = None
    error: str | None = None

    @classmethod
    def from_record(cls, job: JobRecord | FinishedJob) -> JobEvent:
        """The event for a finished job as SQL holds it."""
        failed = job.error is not None and job.status != JobStatus.SUCCEEDED
        return cls(
            job_id=job.id,
            batch_id=job.batch_id,
            custom_id=job.custom_id,
            status=job.status.value,
            deployment=job.deployment,
            cost_usd=float(job.cost_usd or 0),
            latency_ms=job.latency_ms,
            error=str(job.error.get("message")) if failed and job.error else None,
        )

    @classmethod
    def cancelled(cls, job: CancelledJob) -> JobEvent:
        """The event of a job cancelled before it ran."""
        return cls(job.id, job.batch_id, job.custom_id, JobStatus.CANCELLED.value, error=job.failure.message)

    def data(self) -> str:
        return to_json(
            {
                "job_id": self.job_id,
                "batch_id": self.batch_id,
                "custom_id": self.custom_id,
                "status": self.status,
                "deployment": self.deployment,
                "cost_usd": self.cost_usd,
                "latency_ms": self.latency_ms,
                "error": self.error,
            }
        ).decode()


@dataclass(frozen=True, slots=True)
class BatchCounts:
    total: int
    done: int
    succeeded: int
    failed: int
    cancelled: int

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.done >= self.total


# The progress hash's fields, in BatchCounts order (the Lua script lists them in the same order).
_COUNTERS = [f.name for f in dataclasses.fields(BatchCounts)]


@dataclass(frozen=True, slots=True)
class Event:
    """One stream entry: `id` is the stream id to resume after."""

    id: str
    type: str
    data: dict[str, Any]


class EventBus:
    """Publishes and reads completion events on one Redis connection."""

    def __init__(self, redis: Redis, *, retention_s: int) -> None:
        self._redis = redis
        self._retention_s = retention_s
        self._script = BatchedScript(redis, _PUBLISH_TERMINAL)

    @property
    def redis(self) -> Redis:
        """The connection the bus publishes on."""
        return self._redis

    def opening(self, batch_id: str, total: int) -> BatchOpening:
        """The batch's total for `enqueue_jobs(opening=...)`: set with its first jobs, in one call."""
        return BatchOpening(keys.batch_progress(batch_id), total, self._retention_s)

    async def open_batch(self, batch_id: str, total: int) -> None:
        """Record the batch size so workers know when it is complete (before any job is queued)."""
        progress = keys.batch_progress(batch_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(progress, "total", str(total))
            pipe.expire(progress, self._retention_s)
            await pipe.execute()

    async def restore(self, batch_id: str, total: int, finished: Sequence[JobEvent]) -> BatchCounts:
        """Rebuild a batch's counters from SQL after Redis lost them (or never got them).

        `finished` is the terminal event of every job SQL says is finished. Each goes through the
        publishing script, so a job whose event is already out (its marker is set, for instance a
        job that finished after Redis lost its data) is not counted twice, and the one that brings
        `done` to `total` appends `batch.completed`. The total is set only where it is missing.
        Safe to repeat, and safe while workers publish. Returns the counts afterwards.
        """
        counts = await self._publish(batch_id, finished, total=total)
        return counts if counts is not None else await self.counts(batch_id)

    def publish_terminal(self, events: Sequence[JobEvent]) -> Awaitable[BatchCounts | None]:
        """Publish terminal events of jobs of one batch; a job already published is skipped.

        Await the batch counts after publishing, or None when `events` is empty. The script calls
        are queued when this is called (storage/bus/coalesce.py): calls made with it share its
        pipeline.
        """
        if not events:
            return ready(None)
        replies = self._queue(events[0].batch_id, events, total=None)
        return Later(lambda: _counts(replies))

    async def _publish(
        self, batch_id: str, events: Sequence[JobEvent], *, total: int | None
    ) -> BatchCounts | None:
        return await _counts(self._queue(batch_id, events, total=total))

    def _queue(self, batch_id: str, events: Sequence[JobEvent], *, total: int | None) -> list[Awaitable[Any]]:
        """The publishing script's calls for `events`, queued now in chunks (their replies, in order)."""
        replies: list[Awaitable[Any]] = []
        # At least one call when restoring a total, even with no finished job to publish.
        starts = range(0, len(events), _PUBLISH_CHUNK) if events or total is None else [0]
        for start in starts:
            chunk = events[start : start + _PUBLISH_CHUNK]
            script_keys = [keys.batch_events(batch_id), keys.batch_progress(batch_id)]
            script_keys += [keys.job_published(e.job_id) for e in chunk]
            restore = "" if total is None or start > 0 else str(total)
            args: list[str | int] = [self._retention_s, _CHANNEL_PREFIX, restore]
            for e in chunk:
                args += [e.job_id, e.status, e.data()]
            replies.append(self._script(keys=script_keys, args=args))
        return replies

    async def counts(self, batch_id: str) -> BatchCounts:
        # redis-py types hash commands as sync-or-async; on an asyncio client they are awaitable.
        raw: list[Any] = await self._redis.hmget(keys.batch_progress(batch_id), _COUNTERS)  # type: ignore[misc]
        return BatchCounts(*(int(v or 0) for v in raw))

    async def read(
        self, batch_id: str, *, after: str = "0-0", block_ms: int | None = None, count: int = 500
    ) -> list[Event]:
        """Events after stream id `after`; with `block_ms`, wait that long for the first one."""
        reply = await self._redis.xread({keys.batch_events(batch_id): after}, count=count, block=block_ms)
        events: list[Event] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                events.append(_decode(entry_id, fields))
        return events

    async def follow(
        self, batch_id: str, *, after: str = "0-0", block_ms: int = 5_000
    ) -> AsyncIterator[Event]:
        """Every event after `after`, live, until the batch's `batch.completed` event."""
        while True:
            for event in await self.read(batch_id, after=after, block_ms=block_ms):
                after = event.id
                yield event
                if event.type == "batch.completed":
                    return


def _decode(entry_id: bytes | str, fields: dict[Any, Any]) -> Event:
    decoded = {as_text(k): as_text(v) for k, v in fields.items()}
    return Event(
        id=as_text(entry_id), type=decoded.get("type", ""), data=json.loads(decoded.get("data", "{}"))
    )


async def _counts(replies: list[Awaitable[Any]]) -> BatchCounts | None:
    """The batch's counts after the last of the publishing script's calls (None if there were none)."""
    counts = None
    for reply in await in_turn(replies):
        counts = BatchCounts(*(int(v) for v in reply[1:]))
    return counts
