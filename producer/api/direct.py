"""The API's busiest route served without FastAPI's routing: `RouteqApi.serve_directly`.

A chat completion through `routeq serve` spent about a fifth of the server's CPU in the framework
around its route function: FastAPI's and Starlette's middleware (server errors, exception
handlers, an exit stack for dependencies, body-limit and telemetry wrappers), the route table's
matching and the endpoint wrapper, and every message sent through each of their `send` wrappers.
The chat route takes the raw `Request` and builds its answer itself, so none of that is needed:
`RouteqApi` hands a POST to /v1/chat/completions straight to the route function, inside the same
body limit and request metrics as every other route, with the app's own exception handlers. Every
other request goes through FastAPI as before; the route stays registered with FastAPI for the
OpenAPI document.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["RouteqApi"]

Endpoint = Callable[[Request], Awaitable[Response]]
Wrap = Callable[[ASGIApp], ASGIApp]


class RouteqApi(FastAPI):
    """FastAPI, with some routes served directly (`serve_directly`)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._direct: dict[tuple[str, str], ASGIApp] = {}

    def serve_directly(self, route: APIRoute, wrap: Wrap) -> None:
        """Serve `route` (registered with this app through its router; its endpoint a function of
        the raw request that returns its response) by calling its endpoint, inside `wrap` (the
        middleware every route has, as one ASGI app around it)."""
        direct = wrap(_Direct(self, route, route.endpoint))
        for method in route.methods or ():
            self._direct[(method, route.path)] = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self._direct.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if direct is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await direct(scope, receive, send)


class _Direct:
    """The ASGI app of one directly served route: the route function, then the app's exception
    handlers for what it raised (one unhandled propagates: the server answers 500 and logs it, as
    FastAPI's `ServerErrorMiddleware` would)."""

    def __init__(self, app: FastAPI, route: APIRoute, endpoint: Endpoint) -> None:
        self.app = app
        self.route = route
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # what routing sets: request metrics name the route by it
        request = Request(scope, receive, send)
        try:
            response = await self.endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        """The app's handler of `exc`'s class or its nearest base, as Starlette looks it up."""
        handlers = self.app.exception_handlers
        return next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
