"""What a worker process holds while it runs, typed, under one key of arq's `ctx` dict.

    Shared         what a caller brings to share (store, catalog or live catalog, sim world, metrics)
    CatalogSwap    hands a new live catalog to what plans, calls or prices with it
    WorkerContext  what start-up built (the job runner, this worker's id, its metrics port), once
                   per process, stored in arq's `ctx` under one key; read with `worker_context(ctx)`

arq hands the same `ctx` dict to its start-up and shut-down hooks and (copied) to every job, so the
context built in `on_startup` reaches each `route_job` call. The hooks live in `workers/worker.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from router_core.catalog import Catalog
from router_core.router import Router
from router_core.settings import SimulateMode
from router_core.sim.world import SimWorld
from router_core.simulated import simulated_ids
from storage.bus import registry
from storage.bus.queue import Deferrals
from storage.fleet.catalog import LiveCatalog
from storage.metrics import Metrics
from storage.sql.store import Store
from workers.cache import JobCache
from workers.metrics_server import MetricsServer
from workers.runner import JobRunner

__all__ = ["CatalogSwap", "Shared", "WorkerContext", "attach", "detach", "worker_context", "worker_record"]

# The one routeq entry in arq's ctx; arq's own entries (redis, job_id, job_try...) sit beside it.
_CTX_KEY = "routeq"


@dataclass(frozen=True)
class Shared:
    """What a caller shares with the worker instead of letting start-up build its own.

    The embedded runner and tests pass theirs: one store (and so one SQLite database) for client and
    worker, a catalog and sim world built in code. Whatever is left None, start-up builds from the
    settings. The caller keeps and closes what it brings: shut-down closes only what start-up opened.

    Attributes:
        store: the SQL store; None opens one on `settings.database_url`.
        catalog: the deployments, fixed for the worker's life; None: the live catalog (`live`).
        live: the live catalog to follow (the embedded runner shares its own); None with no
            `catalog`: start-up opens one (seeded from `settings.catalog_path`).
        sim_world: the simulated providers; None builds them from the catalog when simulating.
        metrics: the registry the runner counts into; None keeps one only when the worker serves
            a metrics port (`settings.worker_metrics_port`).
        now: the wall clock (epoch s) budgets read: which day, week and month a call counts in;
            None is `time.time` (tests bring a fake one to cross a period's boundary).
    """

    store: Store | None = None
    catalog: Catalog | None = None
    sim_world: SimWorld | None = None
    live: LiveCatalog | None = None
    metrics: Metrics | None = None
    now: Callable[[], float] | None = None


@dataclass(frozen=True)
class CatalogSwap:
    """Hands a new live catalog to everything in the worker that plans, calls or prices with one.

    The router swaps catalog and adapters together (walks under way keep theirs); the response
    cache checks cached answers' deployments against it; the runner reports what it simulates.
    """

    router: Router
    cache: JobCache
    runner: JobRunner
    simulate: SimulateMode

    def __call__(self, catalog: Catalog) -> None:
        self.router.use_catalog(catalog)
        self.cache.catalog = catalog
        self.runner.simulated = simulated_ids(catalog, self.simulate)


@dataclass(frozen=True)
class WorkerContext:
    """What `on_startup` built for this worker process; every job reuses it.

    Attributes:
        runner: routes each delivered job (its router, store, event bus and budgets).
        worker_id: `host:pid:n`, this worker's key in `routeq:workers` and on the jobs it runs.
        started: when start-up finished (epoch seconds), reported in `routeq:workers`.
        metrics_server: this worker's metrics port, if it serves one.
        deferrals: puts jobs deferred for capacity back on the worker's queue at their turn;
            None: arq's own `Retry(defer)` (the score bumped by the delay).
        opened: what start-up opened, and only that (not what `Shared` brought); `close()`
            closes it in reverse order.
    """

    runner: JobRunner
    worker_id: str
    started: float
    opened: AsyncExitStack = field(repr=False)
    metrics_server: MetricsServer | None = None
    deferrals: Deferrals | None = None

    def record(self, *, running: int = 0) -> str:
        """This worker's entry in `routeq:workers`, as of now, with the jobs it runs (see `worker_record`)."""
        return registry.worker_record(self.started, running=running, simulated=self.runner.simulated)

    async def close(self) -> None:
        """Close what start-up opened: metrics port, `routeq:workers` entry, SDK clients, own store."""
        await self.opened.aclose()


def worker_record(started: float, *, running: int = 0, simulated: frozenset[str] = frozenset()) -> str:
    """A worker's entry in `routeq:workers`, written at start and with every lease renewal.

    The format is `storage.bus.registry`'s: `routeq workers` and the API read it there."""
    return registry.worker_record(started, running=running, simulated=simulated)


def worker_context(ctx: Mapping[str, Any]) -> WorkerContext:
    """The context start-up stored in arq's `ctx`.

    Raises:
        LookupError: start-up has not run (or failed); the message names the hook to install.
    """
    context = ctx.get(_CTX_KEY)
    if not isinstance(context, WorkerContext):
        raise LookupError(
            "no routeq worker context in arq's ctx: run the worker with routeq's on_startup hook "
            "(build_worker or make_worker_settings in workers/worker.py)"
        )
    return context


def attach(ctx: MutableMapping[str, Any], context: WorkerContext) -> None:
    """Store `context` in arq's `ctx` (start-up)."""
    ctx[_CTX_KEY] = context


def detach(ctx: MutableMapping[str, Any]) -> WorkerContext | None:
    """Take the context out of arq's `ctx` (shut-down); None if start-up never stored one."""
    context = ctx.pop(_CTX_KEY, None)
    return context if isinstance(context, WorkerContext) else None
