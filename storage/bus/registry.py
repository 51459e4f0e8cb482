"""Who works and what waits, read for operators: the worker registry and the arq queue.

    routeq:workers   hash: worker id -> JSON {host, pid, started, seen, running, simulated}: the
                     deployments it serves from the simulated world; a worker writes
                     its entry at start and with every lease renewal (a third of `job_lease_s`),
                     and deletes it on shut-down. One killed without shutting down stays until it is
                     older than three leases (`is_live` is False; the metrics refresh deletes it).
    <queue_name>     arq's sorted set, score = when the job is due (ms): the jobs waiting to run; a
                     score in the future is a job deferred (waiting for capacity, or a retry after
                     backoff). A claimed job waits in routeq:running:<queue> until its delivery
                     ends (storage.bus.queue); the depth counts both.

The record's format lives here, not in `workers`, because the CLI and the API read what workers
write and may not import `workers`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from storage import keys
from storage.connections import as_text

__all__ = ["QueueStats", "WorkerEntry", "queue_stats", "registered_workers", "worker_record"]

# A worker not seen for this many leases was killed without unregistering (storage.metrics agrees).
STALE_AFTER_LEASES = 3


def worker_record(started: float, *, running: int = 0, simulated: Collection[str] = ()) -> str:
    """This process's entry in `routeq:workers`, as of now: host, pid, start, last seen, jobs running,
    and which deployments it serves from the simulated world (its environment decides: API keys)."""
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "seen": time.time(),
        "running": running,
        "simulated": sorted(simulated),
    }
    return json.dumps(info)


@dataclass(frozen=True, slots=True)
class WorkerEntry:
    """One registered worker as it last reported itself (times are epoch seconds)."""

    id: str
    host: str
    pid: int
    started: float
    seen: float
    running: int
    simulated: frozenset[str] | None  # None: a worker older than the field did not say

    def is_live(self, *, job_lease_s: float, now: float) -> bool:
        """Seen within three leases: a live worker renews its entry every third of a lease."""
        return now - self.seen <= STALE_AFTER_LEASES * job_lease_s

    def view(self, *, job_lease_s: float, now: float) -> dict[str, Any]:
        """The entry as `routeq workers --json` prints it."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "last_seen_s_ago": round(max(0.0, now - self.seen), 1),
            "running": self.running,
            "live": self.is_live(job_lease_s=job_lease_s, now=now),
            "simulated": None if self.simulated is None else sorted(self.simulated),
        }


def _entry(worker_id: str, raw: str) -> WorkerEntry | None:
    try:
        record = json.loads(raw)
        return WorkerEntry(
            id=worker_id,
            host=str(record["host"]),
            pid=int(record["pid"]),
            started=float(record["started"]),
            seen=float(record["seen"]),
            running=int(record.get("running", 0)),  # entries of workers older than the field
            simulated=frozenset(map(str, record["simulated"])) if "simulated" in record else None,
        )
    except (ValueError, KeyError, TypeError):  # an entry nobody can read is no worker to show
        return None


async def registered_workers(redis: Redis) -> list[WorkerEntry]:
    """Every worker in `routeq:workers`, most recently seen first (stale ones included)."""
    entries = await redis.hgetall(keys.WORKERS)  # type: ignore[misc]
    found = [_entry(as_text(k), as_text(v)) for k, v in entries.items()]
    return sorted((e for e in found if e is not None), key=lambda e: -e.seen)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The arq queue and its running set at one moment.

    Attributes:
        depth: every job queued or running (the queue's entries and the running set's).
        due: queue entries whose time has come (waiting for a worker).
        deferred: queue entries due later (waiting for capacity, or a retry's backoff).
        running: jobs claimed by a worker and not yet ended (`keys.queue_running`).
        oldest_due_age_s: how long the oldest due entry has been due; None when none is.
    """

    depth: int
    due: int
    deferred: int
    running: int
    oldest_due_age_s: float | None

    def view(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "due": self.due,
            "deferred": self.deferred,
            "running": self.running,
            "oldest_due_age_s": None if self.oldest_due_age_s is None else round(self.oldest_due_age_s, 1),
        }


async def queue_stats(redis: Redis, queue_name: str, *, now_ms: int) -> QueueStats:
    """Depth, due, deferred and running counts and the oldest due entry's age, in one transaction."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcard(queue_name)
        pipe.zcount(queue_name, "-inf", now_ms)
        pipe.zrange(queue_name, 0, 0, withscores=True)
        pipe.zcard(keys.queue_running(queue_name))
        queued, due, first, running = await pipe.execute()
    oldest = None
    if due and first:
        oldest = max(0.0, (now_ms - float(first[0][1])) / 1000)
    return QueueStats(
        depth=int(queued) + int(running),
        due=int(due),
        deferred=int(queued) - int(due),
        running=int(running),
        oldest_due_age_s=oldest,
    )
