"""`routeq run`'s engine: the client and an arq worker pool in one process.

With no `ROUTEQ_REDIS_URL` the Redis is fakeredis, living as long as the process; the SQL store is
the usual database (SQLite file by default), so results stay readable after the run.

This module imports `workers` (and so arq's worker and the provider SDKs): only `routeq run`
imports it, inside the command.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from arq.connections import ArqRedis
from fakeredis import FakeServer

from producer.client import Client
from router_core.catalog import load_catalog
from storage.connections import connect_redis, embedded_redis
from storage.fleet.budgets import Budgets
from storage.settings import Settings
from storage.sql.store import Store
from workers.context import Shared
from workers.worker import build_worker, run_worker

__all__ = ["Embedded", "embedded_client"]

T = TypeVar("T")


@dataclass
class Embedded:
    """The client to submit with, and the in-process worker's task (done only if it failed)."""

    client: Client
    worker_task: asyncio.Task[None]

    async def until(self, work: Awaitable[T]) -> T:
        """Await `work`, unless the worker stops first: then raise why it stopped."""
        task = asyncio.ensure_future(work)
        await asyncio.wait({task, self.worker_task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        self.worker_task.result()  # the worker's own error, e.g. a database that went away
        raise RuntimeError("the in-process worker stopped before the batch finished")


@asynccontextmanager
async def embedded_client(settings: Settings) -> AsyncIterator[Embedded]:
    """A client whose jobs run on a worker in this process; the worker stops on exit.

    The catalog is loaded here, before the worker starts, so a bad catalog is an error at once.
    """
    catalog = load_catalog(settings.catalog_path)
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
    # A one-off run opens no worker metrics port (nothing would scrape it; ROUTEQ_WORKER_METRICS_PORT
    # is for `routeq worker` processes).
    worker = build_worker(
        settings.model_copy(update={"worker_metrics_port": None}),
        redis=await redis_connection(),
        handle_signals=False,
        shared=Shared(store=store, catalog=catalog),
    )
    worker_task = asyncio.create_task(run_worker(worker))
    try:
        yield Embedded(client, worker_task)
    finally:
        # Stop polling; jobs still running (after Ctrl-C) are cancelled, and run_worker closes it.
        worker.handle_sig(signal.SIGINT)
        await asyncio.wait({worker_task})  # a worker failure is raised by until(), not here
        await client.redis.aclose()
        await store.close()
