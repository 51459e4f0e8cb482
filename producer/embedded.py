"""`routeq run`'s engine: the client and an arq worker pool in one process.

With no `ROUTEQ_REDIS_URL` the Redis is fakeredis, living as long as the process; the SQL store is
the usual database (SQLite file by default), so results stay readable after the run.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.connections import ArqRedis
from fakeredis import FakeServer

from producer.client import Client
from storage.connections import connect_redis, embedded_redis
from storage.settings import Settings
from storage.store import Store
from workers.worker import build_worker, run_worker

__all__ = ["embedded_client"]


@asynccontextmanager
async def embedded_client(settings: Settings) -> AsyncIterator[Client]:
    """A `Client` whose jobs are run by a worker in this process; the worker stops on exit."""
    server = FakeServer() if settings.redis_url is None else None

    async def redis_connection() -> ArqRedis:
        if server is not None:
            return embedded_redis(settings, server)
        return await connect_redis(settings)

    store = await Store.open(settings.database_url)
    client = Client(await redis_connection(), store, settings)
    worker = build_worker(settings, redis=await redis_connection(), handle_signals=False, store=store)
    worker_task = asyncio.create_task(run_worker(worker))
    try:
        yield client
    finally:
        # Stop polling; jobs still running (after Ctrl-C) are cancelled, and run_worker closes it.
        worker.handle_sig(signal.SIGINT)
        await worker_task
        await client.redis.aclose()
        await store.close()
