"""The API's busiest routes served without FastAPI's routing: `RouteqApi.serve_directly`.

A chat completion through `routeq serve` spent about a fifth of the server's CPU in the framework
around its route function: FastAPI's and Starlette's middleware (server errors, exception
handlers, an exit stack for dependencies, body-limit and telemetry wrappers), the route table's
matching and the endpoint wrapper, and every message sent through each of their `send` wrappers.
The chat route takes the raw `Request` and builds its answer itself, so none of that is needed:
`RouteqApi` hands a POST to /v1/chat/completions straight to the route function, inside the app's
own middleware (the body limit and request metrics every route has), with its exception handlers.
The Messages API's POST /v1/messages (Anthropic clients) is served the same way. Every other
request goes through FastAPI as before; the routes stay registered with FastAPI for the OpenAPI
document.
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


class RouteqApi(FastAPI):
    """FastAPI, with some routes served directly (`serve_directly`)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._direct_routes: list[APIRoute] = []
        self._direct: dict[tuple[str, str], ASGIApp] | None = None  # built on the first call

    def serve_directly(self, route: APIRoute) -> None:
        """Serve `route` (registered with this app through its router; its endpoint a function of
        the raw request that returns its response) by calling its endpoint, inside the app's own
        middleware (`add_middleware`), in the order FastAPI stacks it."""
        self._direct_routes.append(route)
        self._direct = None

    def _build_direct(self) -> dict[tuple[str, str], ASGIApp]:
        direct: dict[tuple[str, str], ASGIApp] = {}
        for route in self._direct_routes:
            app: ASGIApp = _Direct(self, route, route.endpoint)
            for cls, args, kwargs in reversed(self.user_middleware):  # as Starlette builds its stack
                app = cls(app, *args, **kwargs)
            for method in route.methods or ():
                direct[(method, route.path)] = app
        return direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._direct is None:
                self._direct = self._build_direct()
            direct = self._direct.get((scope["method"], scope["path"]))
            if direct is not None:
                scope["app"] = self
                await direct(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


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
