"""The FastAPI application: `create_app(settings)`; `routeq serve` runs it on uvicorn.

    /v1/chat/completions                      OpenAI-compatible, plain or streamed    (chat.py)
    /v1/files, /v1/batches                    the OpenAI Batch API                    (batches.py)
    /v1/jobs, /v1/batches/{id}/jobs, events   routeq's own jobs and SSE events        (jobs.py)
    /v1/providers, /v1/admin/..., /health, /ready                                     (ops.py)
    /v1/analytics, /metrics                   SQL analytics, Prometheus               (observe.py)
    /docs, /openapi.json                      OpenAPI

The app meets the workers only through Redis (queue, events, relayed streams, fleet state) and SQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from arq.connections import ArqRedis
from fastapi import FastAPI

from producer.api import batches, chat, jobs, observe, ops
from producer.api.context import attach, open_context
from producer.api.errors import install_error_handlers
from producer.api.limits import BodyLimit
from producer.api.observe import RequestMetrics
from router_core.catalog import Catalog
from storage.settings import Settings
from storage.store import Store

__all__ = ["create_app", "serve_app"]

# Bodies other than uploads: a chat request with a long conversation fits many times over.
_MAX_JSON_BODY = 16 * 1024 * 1024

_DESCRIPTION = """\
LLM routing behind an OpenAI-compatible API. Every request is a job on the routeq queue; workers route
it across providers by cost, speed and quality, with retries, failover, breakers, rate limits and budgets
shared by the fleet. Authenticate with `Authorization: Bearer <key>` (`routeq keys create`).
"""


def create_app(
    settings: Settings | None = None,
    *,
    redis: ArqRedis | None = None,
    store: Store | None = None,
    catalog: Catalog | None = None,
) -> FastAPI:
    """The API app. Connections are opened at startup (or the ones given are used, not closed)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_context(settings, redis=redis, store=store, catalog=catalog) as ctx:
            attach(app, ctx)
            yield

    app = FastAPI(title="routeq", version="0.1.0", description=_DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(RequestMetrics)
    app.add_middleware(
        BodyLimit,
        uploads_max=settings.api_max_upload_bytes,
        default_max=_MAX_JSON_BODY,
        upload_path="/v1/files",
    )
    for module in (chat, batches, jobs, ops, observe):
        app.include_router(module.router)
    return app


async def serve_app(settings: Settings, redis: ArqRedis, store: Store, *, host: str, port: int) -> None:
    """Serve the API inside an already running loop until Ctrl-C (used by `routeq run --serve`)."""
    app = create_app(settings, redis=redis, store=store)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    await server.serve()
