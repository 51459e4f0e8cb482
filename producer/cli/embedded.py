"""`routeq run`'s engine: the client and an arq worker pool in one process.

With no `ROUTEQ_REDIS_URL` the Redis is fakeredis, living as long as the process; the SQL store is
the usual database (SQLite file by default), so results stay readable after the run.

Ctrl-C (`routeq run` installs the handler, see `Interrupted`): the worker stops taking jobs and
the running ones get `shutdown_grace_s` to finish (a second Ctrl-C cuts that short); those still
running are then cancelled and handed back to `queued` in SQL, so no row is left `running` and
`routeq run --resume BATCH_ID` runs the rest.

This module imports `workers` (and so arq's worker and the provider SDKs): only `routeq run`
imports it, inside the command.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from arq.connections import ArqRedis
from fakeredis import FakeServer

from producer.client import Client
from router_core.catalog import Catalog, load_catalog
from router_core.simulated import simulated_ids
from storage.connections import connect_redis, embedded_redis
from storage.fleet.budgets import Budgets
from storage.fleet.catalog import LiveCatalog
from storage.logs import tune_gc
from storage.settings import Settings
from storage.sql.store import Store
from workers.context import Shared, worker_context
from workers.worker import RouteqWorker, build_worker, run_worker

__all__ = ["Embedded", "Interrupted", "embedded_client"]

T = TypeVar("T")


class Interrupted(Exception):
    """`Embedded.until` was stopped (Ctrl-C) before its work finished."""


@dataclass
class Embedded:
    """The client to submit with, the in-process worker and its task (done only if it failed),
    the catalog it routes with and which of its deployments are simulated."""

    client: Client
    worker: RouteqWorker
    worker_task: asyncio.Task[None]
    catalog: Catalog
    simulated: frozenset[str]

    async def until(self, work: Awaitable[T], *, stop: asyncio.Event | None = None) -> T:
        """Await `work`, unless the worker stops first (then raise why) or `stop` is set (`Interrupted`)."""
        task = asyncio.ensure_future(work)
        waits: set[asyncio.Future[Any]] = {task, self.worker_task}
        stopped = None if stop is None else asyncio.ensure_future(stop.wait())
        if stopped is not None:
            waits.add(stopped)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopped is not None:
                stopped.cancel()
        if task.done():
            return task.result()
        task.cancel()
        if not self.worker_task.done():
            raise Interrupted
        self.worker_task.result()  # the worker's own error, e.g. a database that went away
        raise RuntimeError("the in-process worker stopped before the batch finished")

    async def stop_work(self, *, grace_s: float, hurry: asyncio.Event) -> int:
        """Stop taking jobs, let running ones finish for `grace_s` (or until `hurry` is set), cancel
        the rest and hand them back to `queued` in SQL; returns how many were handed back."""
        self.worker.allow_pick_jobs = False
        running = [t for t in self.worker.tasks.values() if not t.done()]
        if running:
            helpers = [asyncio.ensure_future(asyncio.wait(running)), asyncio.ensure_future(hurry.wait())]
            await asyncio.wait(helpers, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
            for helper in helpers:
                helper.cancel()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        try:
            worker_id = worker_context(self.worker.ctx).worker_id
        except LookupError:  # stopped before its start-up finished: it started no job
            return 0
        return await self.client.store.runs.hand_back(worker_id)


@asynccontextmanager
async def embedded_client(settings: Settings) -> AsyncIterator[Embedded]:
    """A client whose jobs run on a worker in this process; the worker stops on exit.

    The catalog file is read here, before the worker starts, so a bad catalog is an error at once.
    It seeds the live catalog in SQL (storage/fleet/catalog.py): a run with a file that changed
    since it last seeded routes with the file, as before; changes made live are kept otherwise.
    """
    load_catalog(settings.catalog_path)  # a bad file fails here, before anything is opened
    server = FakeServer() if settings.redis_url is None else None

    async def redis_connection() -> ArqRedis:
        if server is not None:
            return embedded_redis(settings, server)
        return await connect_redis(settings)

    store = await Store.open(settings.database_url)
    client = Client(await redis_connection(), store, settings, all_tenants=True)
    if server is not None:
        # The in-process Redis starts empty every run; the ledger in SQL remembers what was spent,
        # so budgets carry over from one `routeq run` to the next.
        await Budgets(
            client.redis, default_user_cap_usd=settings.default_user_budget_usd
        ).rebuild_from_ledger(store)
    live = await LiveCatalog.from_settings(client.redis, store, settings)
    catalog = live.current
    # A one-off run opens no worker metrics port (nothing would scrape it; ROUTEQ_WORKER_METRICS_PORT
    # is for `routeq worker` processes).
    worker = build_worker(
        settings.model_copy(update={"worker_metrics_port": None}),
        redis=await redis_connection(),
        handle_signals=False,
        shared=Shared(store=store, live=live),
    )
    tune_gc(settings.gc_threshold)  # the imports and the stores are done: what is alive is frozen
    worker_task = asyncio.create_task(run_worker(worker))
    try:
        yield Embedded(client, worker, worker_task, catalog, simulated_ids(catalog, settings.simulate))
    finally:
        # Stop polling; jobs still running (after Ctrl-C) are cancelled, and run_worker closes it.
        worker.handle_sig(signal.SIGINT)
        await asyncio.wait({worker_task})  # a worker failure is raised by until(), not here
        await live.close()
        await client.redis.aclose()
        await store.close()
