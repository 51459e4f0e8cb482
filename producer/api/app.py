"""The FastAPI application: `create_app(settings)`; `routeq serve` runs it on uvicorn.

    /v1/chat/completions                      OpenAI-compatible, plain or streamed    (chat.py)
    /v1/messages                              Anthropic-compatible                    (messages.py)
    /v1/messages/batches                      the Anthropic Message Batches API       (message_batches.py)
    /v1/files, /v1/batches                    the OpenAI Batch API                    (batches.py)
    /v1/jobs, /v1/batches/{id}/jobs, events   routeq's own jobs and SSE events        (jobs.py)
    /v1/cache/stats, /v1/cache/clear, /v1/cache/policy   the response cache           (cache.py)
    /v1/feedback, /v1/quality                 ratings of answers, learned quality     (quality.py)
    /v1/providers, /v1/admin/..., /health, /ready                                     (ops.py)
    /v1/analytics, /metrics                   SQL analytics, Prometheus               (observe.py)
    /v1/spend                                 spend per user, key or batch            (spend.py)
    /v1/tenant/settings                       the tenant's default strategy           (tenant.py)
    /v1/webhooks, /v1/webhooks/deliveries     webhook endpoints, deliveries, attempts (webhooks.py)
    /docs, /openapi.json                      OpenAPI
    /ui (and / redirecting there)             the web dashboard                       (producer/ui)

The app meets the workers only through Redis (queue, events, relayed streams, fleet state) and SQL.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import FrameType
from typing import Any

import uvicorn
from arq.connections import ArqRedis
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from producer import ui
from producer.api import (
    batches,
    cache,
    chat,
    jobs,
    message_batches,
    messages,
    observe,
    ops,
    quality,
    spend,
    tenant,
    webhooks,
)
from producer.api import catalog as live_catalog
from producer.api.context import attach, open_context
from producer.api.direct import RouteqApi
from producer.api.errors import install_error_handlers
from producer.api.limits import BodyLimit
from producer.api.observe import RequestMetrics
from producer.api.stopping import Stopping
from router_core.catalog import Catalog
from storage.settings import Settings
from storage.sql.store import Store

__all__ = ["ApiServer", "api_config", "create_app", "serve_app"]

# Bodies other than uploads: a chat request with a long conversation fits many times over.
_MAX_JSON_BODY = 16 * 1024 * 1024

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}

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
) -> RouteqApi:
    """The API app. Connections are opened at startup (or the ones given are used, not closed)."""
    settings = settings or Settings()

    stopping = Stopping()  # made before the server starts: `ApiServer` tells it when it stops

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_context(settings, redis=redis, store=store, catalog=catalog) as ctx:
            ctx.stopping = stopping
            attach(app, ctx)
            yield

    app = RouteqApi(title="routeq", version="0.1.0", description=_DESCRIPTION, lifespan=lifespan)
    app.state.stopping = stopping
    install_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        uploads_max=settings.api_max_upload_bytes,
        default_max=_MAX_JSON_BODY,
        upload_path="/v1/files",
    )
    app.add_middleware(RequestMetrics)  # added last, so outermost: a 413 is counted too
    routers = (
        chat,
        messages,
        message_batches,
        batches,
        jobs,
        cache,
        quality,
        ops,
        observe,
        tenant,
        spend,
        webhooks,
        live_catalog,
    )
    for module in routers:
        app.include_router(module.router)
    app.include_router(ui.router)
    # The busiest routes, past FastAPI's own middleware and routing (producer/api/direct.py), inside
    # the middleware added above.
    for module, path in ((chat, chat.ROUTE), (messages, messages.ROUTE)):
        route = next(r for r in module.router.routes if isinstance(r, APIRoute) and r.path == path)
        app.serve_directly(route)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, saying what the API really answers to a bad request: 400, not 422."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in schema["paths"].values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if "422" in responses:
                    del responses["422"]
                    responses["400"] = {
                        "description": "Invalid request: the message names the field",
                        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
                    }
        for unused in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema


def api_config(app: FastAPI, settings: Settings, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration of the API: on SIGTERM requests in progress get
    ROUTEQ_SHUTDOWN_GRACE_S to be answered, then are closed, so the server always stops."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        **options,
    )


class ApiServer(uvicorn.Server):
    """uvicorn's server, which tells the app's waiting requests when it starts to stop
    (producer/api/stopping.py): they answer before the grace period ends instead of being cut off."""

    def __init__(self, config: uvicorn.Config, stopping: Stopping) -> None:
        super().__init__(config)
        self.stopping = stopping

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stopping.begin(self.config.timeout_graceful_shutdown or 0)
        await super().shutdown(sockets)


async def serve_app(settings: Settings, redis: ArqRedis, store: Store, *, host: str, port: int) -> int | None:
    """Serve the API inside an already running loop until Ctrl-C (used by `routeq run --serve`).

    Returns the signal that stopped it (None if none did): the caller finishes its own clean-up,
    then exits as that signal would (130 for Ctrl-C).
    """
    app = create_app(settings, redis=redis, store=store)
    # log_config=None: `routeq run` configured logging (storage/logs.py), uvicorn's lines included.
    server = _SignalReportingServer(
        api_config(app, settings, host=host, port=port, log_level="warning"), app.state.stopping
    )
    await server.serve()
    return server.stopped_by


class _SignalReportingServer(ApiServer):
    """The API's server, except that a signal it caught is reported to the caller, not raised again.

    uvicorn raises a signal it handled once more after shutting down. Inside `routeq run --serve`
    that lands in asyncio.run's own SIGINT handler, which cancels the command wherever it is (its
    clean-up included), or not at all when the command ends first: the exit status and the
    clean-up depended on timing.
    """

    def __init__(self, config: uvicorn.Config, stopping: Stopping) -> None:
        super().__init__(config, stopping)
        self.stopped_by: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopped_by = self.stopped_by or sig
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread may
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
