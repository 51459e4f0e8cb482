"""POST /v1/chat/completions (and /v1/messages) is served past FastAPI's middleware and routing
(producer/api/direct.py), with what every route has: the body limit, the request metrics under the
route's template, and the app's error answers (401, 400 naming the field)."""

from __future__ import annotations

from typing import Any

import httpx2
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.api_harness import serve_api
from tests.backends import Backend

ROUTE = "/v1/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Say hello"}]}


class Counted:
    """An ASGI app in front of another, counting the HTTP requests it passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


async def test_chat_completions_skip_fastapis_routing_but_keep_limits_metrics_and_errors(
    backend: Backend,
) -> None:
    async with serve_api(backend) as api:
        assert api.app is not None
        assert api.app.middleware_stack is not None  # built at start-up (the lifespan)
        fastapi: Any = Counted(api.app.middleware_stack)  # FastAPI's middleware, then its routing
        api.app.middleware_stack = fastapi
        secret = await api.key("acme")
        async with httpx2.AsyncClient(base_url=api.url, timeout=30) as http:
            auth = {"Authorization": f"Bearer {secret}"}
            answered = await http.post(ROUTE, json=BODY, headers=auth)
            assert answered.status_code == 200, answered.text
            assert answered.json()["object"] == "chat.completion"

            no_key = await http.post(ROUTE, json=BODY)
            assert no_key.status_code == 401
            assert no_key.json()["error"]["message"].startswith("missing API key")
            invalid = await http.post(ROUTE, json={"model": "auto"}, headers=auth)
            assert invalid.status_code == 400
            assert "messages" in invalid.json()["error"]["message"]
            too_large = await http.post(ROUTE, content=b"x" * (16 * 1024 * 1024 + 1), headers=auth)
            assert too_large.status_code == 413
            assert too_large.json()["error"]["code"] == "too_large"
            assert fastapi.paths == []
            message = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
            answered = await http.post("/v1/messages", json=message, headers=auth)
            assert answered.status_code == 200, answered.text
            assert answered.json()["type"] == "message"
            assert (await http.post("/v1/messages", json=message)).status_code == 401
            assert fastapi.paths == []  # the Messages API is served directly too

            metrics = (await http.get("/metrics", headers=auth)).text
            assert fastapi.paths == ["/metrics"]  # every other route goes through FastAPI, as before
        for status in (200, 401, 400, 413):  # a 413, refused before the route, under its template too
            assert (
                f'routeq_http_requests_total{{method="POST",route="{ROUTE}",status="{status}"}} 1.0'
                in metrics
            )


async def test_requests_refused_before_their_route_are_counted_under_its_template(backend: Backend) -> None:
    """The request metrics are the outermost middleware: a body over the limit, refused before
    routing, counts under the template of the route it was for; a path no route serves under
    "unmatched"."""
    async with serve_api(backend) as api:
        secret = await api.key("acme")
        async with httpx2.AsyncClient(base_url=api.url, timeout=30) as http:
            auth = {"Authorization": f"Bearer {secret}"}
            too_large = await http.post("/v1/jobs", content=b"x" * (16 * 1024 * 1024 + 1), headers=auth)
            assert too_large.status_code == 413
            assert (await http.get("/v1/nothing-here", headers=auth)).status_code == 404
            metrics = (await http.get("/metrics", headers=auth)).text
        assert 'routeq_http_requests_total{method="POST",route="/v1/jobs",status="413"} 1.0' in metrics
        assert 'routeq_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in metrics
