"""`routeq workers` and `routeq queue`: who works and what waits, read from the fleet's Redis.

Workers register themselves in `routeq:workers` (host, pid, last seen, jobs running) and renew
the entry with their job leases; the queue is arq's sorted set. Both are read through
`storage.bus.registry`, which owns the formats, so neither command imports `workers`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from producer.cli._common import JsonFlag, execute, load_settings, print_json, with_redis

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from storage.bus.registry import QueueStats, WorkerEntry
    from storage.settings import Settings

__all__ = ["NO_WORKER_GRACE_S", "queue", "until_no_live_worker", "workers"]

console = Console(emoji=False, highlight=False)
_HINT = "Workers and the queue live in the fleet's Redis: set ROUTEQ_REDIS_URL to it."


# `submit --wait` gives up after the registry has shown no live worker for this long: enough for a
# worker started next to it to register, short enough that nobody waits on nothing for long.
NO_WORKER_GRACE_S = 3.0
_CHECK_EVERY_S = 1.0


async def until_no_live_worker(redis: Redis, settings: Settings, *, grace_s: float | None = None) -> None:
    """Return once `routeq:workers` has shown no live worker for `grace_s` (default
    `NO_WORKER_GRACE_S`) seconds; never while one is live.

    Run next to a wait on a batch: nobody is left waiting for jobs that no process will run.
    """
    from storage.bus.registry import registered_workers  # noqa: PLC0415 - redis: on use

    grace_s = NO_WORKER_GRACE_S if grace_s is None else grace_s
    missing_since: float | None = None
    while True:
        now = time.time()
        live = any(
            e.is_live(job_lease_s=settings.job_lease_s, now=now) for e in await registered_workers(redis)
        )
        if live:
            missing_since = None
        elif missing_since is None:
            missing_since = time.monotonic()
        if missing_since is not None and time.monotonic() - missing_since >= grace_s:
            return
        await asyncio.sleep(_CHECK_EVERY_S)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def workers(as_json: JsonFlag = False) -> None:
    """Registered workers: host, pid, when each was last seen and how many jobs it is running."""
    from storage.bus.registry import registered_workers  # noqa: PLC0415 - redis: on use

    settings = load_settings()

    async def go(redis: Redis) -> list[WorkerEntry]:
        return await registered_workers(redis)

    found = execute(with_redis(settings, go, hint=_HINT))
    now = time.time()
    views = [entry.view(job_lease_s=settings.job_lease_s, now=now) for entry in found]
    if as_json:
        print_json({"workers": views})
        return
    if not found:
        console.print("no worker registered: start one with `routeq worker`")
        return
    table = Table(title=f"workers ({sum(v['live'] for v in views)} live)", title_justify="left")
    for column in ("host", "pid", "started (UTC)", "last seen", "running"):
        table.add_column(column, justify="right" if column in ("pid", "running") else "left")
    for entry, view in zip(found, views, strict=True):
        seen = _ago(view["last_seen_s_ago"]) + ("" if view["live"] else " [red](stale)[/red]")
        started = datetime.fromtimestamp(entry.started, UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(escape(entry.host), str(entry.pid), started, seen, str(entry.running))
    console.print(table)
    if any(not v["live"] for v in views):
        console.print(
            "stale: not seen for three job leases (killed without shutting down); its jobs run "
            "again elsewhere once their leases expire"
        )


def queue(as_json: JsonFlag = False) -> None:
    """The job queue: depth, jobs due, deferred and running, how long the oldest due job has waited."""
    from storage.bus.registry import queue_stats, registered_workers  # noqa: PLC0415 - redis: on use

    settings = load_settings()

    async def go(redis: Redis) -> tuple[QueueStats, int]:
        stats = await queue_stats(redis, settings.queue_name, now_ms=int(time.time() * 1000))
        now = time.time()
        live = sum(
            e.is_live(job_lease_s=settings.job_lease_s, now=now) for e in await registered_workers(redis)
        )
        return stats, live

    stats, live = execute(with_redis(settings, go, hint=_HINT))
    if as_json:
        print_json({"queue": settings.queue_name, **stats.view(), "live_workers": live})
        return
    table = Table(title=f"queue {escape(settings.queue_name)}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("depth (running included)", str(stats.depth))
    table.add_row("due (waiting for a worker)", str(stats.due))
    table.add_row("deferred (waiting for capacity or a retry)", str(stats.deferred))
    table.add_row("running", str(stats.running))
    oldest = "-" if stats.oldest_due_age_s is None else f"{stats.oldest_due_age_s:.1f}s"
    table.add_row("oldest due job waiting for", oldest)
    table.add_row("live workers", str(live) if live else "[red]0[/red]")
    console.print(table)
