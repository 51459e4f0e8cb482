"""The HTTP API on loopback for tests: uvicorn serving `create_app` plus a live worker, one event loop.

The API and the worker share the test backend's Redis (a fakeredis server or the real one) and SQL
store, exactly as separate processes would; only the process boundary is left out.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
import uvicorn

from producer.api import create_app
from producer.api.direct import RouteqApi
from router_core.catalog import Catalog
from router_core.providers import sim_world_for
from router_core.sim import create_server
from router_core.sim.world import SimWorld
from tests.backends import Backend
from tests.conftest import TRIO, make_catalog
from workers.context import Shared
from workers.worker import build_worker, run_worker


@dataclass
class LiveApi:
    """A running API: its base URL, and keys made for tests."""

    url: str
    backend: Backend
    catalog: Catalog
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)
    sim_world: SimWorld | None = None  # the simulated providers the worker calls (in-process or loopback)
    app: RouteqApi | None = None  # its `state.stopping.begin` acts as a server that starts to stop

    async def key(self, tenant: str, user: str = "u1", *, admin: bool = False, operator: bool = False) -> str:
        """A new API key's secret for `tenant`/`user`."""
        _, secret = await self.backend.store.api_keys.create(
            tenant=tenant, user_id=user, admin=admin, operator=operator
        )
        return secret

    def openai(self, secret: str, **options: Any) -> openai.AsyncOpenAI:
        """The official SDK pointed at this API (closed when the server stops)."""
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=secret, max_retries=0, **options)
        self.clients.append(client)
        return client


@asynccontextmanager
async def serve_api(
    backend: Backend,
    *,
    catalog: Catalog | None = None,
    worker: bool = True,
    loopback_sim: bool = False,
    **settings: Any,
) -> AsyncIterator[LiveApi]:
    """Serve the API on 127.0.0.1 (a free port), with a worker taking jobs unless `worker=False`.

    The worker calls the sim world in-process, unless `loopback_sim`: then the world is served on
    loopback too, so a streamed answer really arrives frame by frame (the in-process transport
    hands a response body over whole).
    """
    catalog = catalog or make_catalog(TRIO)
    async with _sim(catalog, loopback_sim) as sim:
        backend.settings = backend.settings.model_copy(update={**settings, "sim_url": sim.url})
        async with _serve(backend, catalog, sim.world if sim.url is None else None, worker=worker) as live:
            live.sim_world = sim.world
            yield live


@dataclass
class _Sim:
    world: SimWorld
    url: str | None


@asynccontextmanager
async def _sim(catalog: Catalog, loopback: bool) -> AsyncIterator[_Sim]:
    world = sim_world_for(catalog)
    if not loopback:
        yield _Sim(world, None)
        return
    server = create_server(world, host="127.0.0.1", port=0)
    task = asyncio.create_task(server.serve())
    try:
        yield _Sim(world, f"http://127.0.0.1:{await _port(server, task)}")
    finally:
        server.should_exit = True
        await task


async def _port(server: uvicorn.Server, task: asyncio.Task[None]) -> int:
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


@asynccontextmanager
async def _serve(
    backend: Backend, catalog: Catalog, sim_world: SimWorld | None, *, worker: bool
) -> AsyncIterator[LiveApi]:
    app = create_app(backend.settings, redis=await backend.redis(), store=backend.store, catalog=catalog)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    server_task = asyncio.create_task(server.serve())
    worker_task: asyncio.Task[None] | None = None
    arq_worker = None
    try:
        port = await _port(server, server_task)
        if worker:
            arq_worker = build_worker(
                backend.settings,
                redis=await backend.redis(),
                handle_signals=False,
                shared=Shared(store=backend.store, catalog=catalog, sim_world=sim_world),
                poll_delay=0.01,
            )
            worker_task = asyncio.create_task(run_worker(arq_worker))
        live = LiveApi(f"http://127.0.0.1:{port}", backend, catalog, app=app)
        try:
            yield live
        finally:
            for client in live.clients:
                await client.close()
    finally:
        if arq_worker is not None and worker_task is not None:
            arq_worker.handle_sig(signal.SIGINT)
            await worker_task
        server.should_exit = True
        await server_task
