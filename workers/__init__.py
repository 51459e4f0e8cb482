"""routeq workers: the arq worker that routes queued jobs.

    worker.py          the arq worker: hooks, `route_job`, `build_worker`, `RouteqWorker`
    context.py         `WorkerContext` (what start-up built) and `Shared` (what a caller brings)
    runner.py          `JobRunner`: what one delivery of a job does
    metrics_server.py  the worker's Prometheus port

`arq workers.WorkerSettings` works: the class is built from `ROUTEQ_*` settings on first access,
so importing this package does not read the environment.
"""

from __future__ import annotations

from typing import Any

from workers.context import Shared, WorkerContext, worker_context
from workers.runner import JobRunner
from workers.worker import make_worker_settings, route_job, worker_settings_class

__all__ = [
    "JobRunner",
    "Shared",
    "WorkerContext",
    "WorkerSettings",
    "make_worker_settings",
    "route_job",
    "worker_context",
    "worker_settings_class",
]


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from storage.settings import Settings  # noqa: PLC0415 - read the environment only when asked

        return worker_settings_class(Settings())
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
