"""A worker process's start-up: the one `WorkerContext` its jobs share (`open_context`).

arq's `on_startup` (workers/worker.py `_Lifecycle`) calls `open_context` once per process: the
router on the fleet's state in Redis, the budgets, the store, the event bus, the response cache,
the job runner, and the background tasks every worker runs (the sweeper, the eval beat, webhooks,
the metrics port). What a caller shares (`Shared`) replaces the part start-up would build.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time

from redis.asyncio import Redis

from router_core.router import Router
from router_core.simulated import simulated_ids, simulated_note
from storage import keys
from storage.bus.events import EventBus
from storage.bus.queue import Deferrals
from storage.fleet.budgets import Budgets
from storage.fleet.catalog import LiveCatalog
from storage.fleet.line import AdmissionLine
from storage.fleet.quality import FleetQuality
from storage.fleet.state import RedisFleetState
from storage.metrics import Metrics
from storage.settings import Settings
from storage.sql.store import Store
from workers.cache import JobCache
from workers.context import CatalogSwap, Shared, WorkerContext, worker_record
from workers.evals import EvalBeat, VerdictRecorder
from workers.metrics_server import serve_worker_metrics
from workers.runner import JobRunner
from workers.semantic import SemanticCache
from workers.sweeper import Sweeper
from workers.webhooks import WebhookSender

__all__ = ["open_context", "unregister"]

logger = logging.getLogger("routeq.worker")


async def open_context(redis: Redis, settings: Settings, shared: Shared, *, worker_id: str) -> WorkerContext:
    """Build this process's router, store, event bus and job runner; `Shared` replaces parts.

    Everything opened here is registered in the context's exit stack, so shut-down closes exactly
    that; if start-up fails half-way, what it had opened is closed before the error propagates.
    """
    async with contextlib.AsyncExitStack() as opened:
        store = shared.store
        if store is None:
            store = await Store.open(settings.database_url)
            opened.push_async_callback(store.close)
        fleet = RedisFleetState.from_settings(redis, settings)
        quality = FleetQuality.from_settings(redis, store, settings)
        live = shared.live
        if live is None and shared.catalog is None:
            live = await LiveCatalog.from_settings(redis, store, settings)
            opened.push_async_callback(live.close)
        catalog = shared.catalog if live is None else live.current
        router = Router.from_settings(
            settings, catalog=catalog, sim_world=shared.sim_world, fleet=fleet, quality=quality
        )
        opened.push_async_callback(router.aclose)
        events = EventBus(redis, retention_s=settings.event_retention_s)
        # Kept when the worker serves a metrics port; a caller may also bring its own (Shared.metrics).
        metrics = shared.metrics
        if metrics is None and settings.worker_metrics_port is not None:
            metrics = Metrics()
        cache = JobCache(
            store,
            redis,
            router.catalog,
            settings.cache_policy(),
            wait_s=settings.cache_wait_s,
            lease_s=settings.job_timeout_s,
            semantic=SemanticCache(store, router, embedder=settings.embedding_deployment),
        )
        opened.push_async_callback(cache.close)
        simulated = simulated_ids(router.catalog, settings.simulate)
        runner = JobRunner(
            router,
            store,
            events,
            worker_id=worker_id,
            budgets=Budgets(
                redis,
                default_user_cap_usd=settings.default_user_budget_usd,
                now=shared.now or time.time,
                zone=settings.budget_zone(),
            ),
            max_tries=settings.max_tries,
            route_timeout_s=settings.job_timeout_s * 0.9,
            simulated=simulated,
            metrics=metrics,
            cache=cache,
            line=AdmissionLine(redis, arrival_margin_s=settings.rate_limit_margin_s),
            admission_wait_s=min(settings.admission_wait_s, settings.job_timeout_s * 0.05),
            carry_max_bytes=settings.carry_request_max_bytes,
            on_answer=VerdictRecorder(store, quality),  # judge jobs' verdicts become evidence
        )
        if live is not None:
            opened.callback(live.on_change(CatalogSwap(router, cache, runner, settings.simulate)))
        started = time.time()
        await redis.hset(keys.WORKERS, worker_id, worker_record(started, simulated=simulated))  # type: ignore[misc]
        opened.push_async_callback(unregister, redis, worker_id)
        # Every worker takes its turn looking for jobs arq dropped (one at a time: a Redis lock).
        sweeper = Sweeper.from_settings(redis, store, events, settings, holder=worker_id, runner=runner)
        sweeper.start()
        opened.push_async_callback(sweeper.close)
        # With ROUTEQ_EVAL_JUDGE set, one worker a beat sends sampled answers to the judge.
        evals = EvalBeat.from_settings(redis, store, events, router.catalog, settings, holder=worker_id)
        if evals is not None:
            evals.start()
            opened.push_async_callback(evals.close)
        if settings.webhook_poll_s > 0:  # every worker sends due webhooks (each attempt claimed in SQL)
            webhooks = WebhookSender.from_settings(redis, store, settings, holder=worker_id)
            webhooks.start()
            opened.push_async_callback(webhooks.close)
        server = None
        if metrics is not None and settings.worker_metrics_port is not None:
            deployments = list(router.catalog)
            refresh = functools.partial(
                metrics.refresh,
                redis,
                fleet,
                deployments,
                settings.queue_name,
                job_lease_s=settings.job_lease_s,
            )
            server = await serve_worker_metrics(metrics, refresh, settings.worker_metrics_port)
            if server is not None:
                opened.push_async_callback(server.close)
        logger.info(
            "routeq worker %s ready: %d deployments, %s, database %s",
            worker_id,
            len(router.catalog),
            simulated_note(router.catalog, simulated, settings.simulate),
            store.engine.url.render_as_string(hide_password=True),
        )
        # Started: what was opened moves to the context, whose close() closes it at shut-down.
        return WorkerContext(
            runner,
            worker_id,
            started,
            opened=opened.pop_all(),
            metrics_server=server,
            deferrals=Deferrals(redis, settings.queue_name),
        )


async def unregister(redis: Redis, worker_id: str) -> None:
    await redis.hdel(keys.WORKERS, worker_id)  # type: ignore[misc]
