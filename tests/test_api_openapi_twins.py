"""The routes that read their caller, body and headers themselves (chat completions, the Messages
API: served past FastAPI's dependencies, producer/api/direct.py) document themselves by hand
(`openapi_extra`). Each must have the OpenAPI entry FastAPI writes for its twin: the same route
declared with FastAPI's dependencies, as it was before it took the raw request.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, Request

from producer.api import chat, messages
from producer.api.app import _openapi, create_app
from producer.api.auth import Caller
from producer.api.context import Ctx
from producer.api.idempotency import IdempotencyKeyHeader
from producer.api.schemas import ChatCompletionBody
from storage.settings import Settings


def _twins() -> FastAPI:
    """The hand-documented routes as FastAPI would document them, on an app of their own."""
    app = FastAPI(title="routeq", version="0.1.0")

    @app.post(
        chat.ROUTE, summary="Create a routed chat completion", response_model=None, tags=["OpenAI-compatible"]
    )
    async def chat_completions(
        body: ChatCompletionBody, principal: Caller, idempotency: IdempotencyKeyHeader = None
    ) -> None: ...

    @app.post(
        messages.ROUTE,
        summary="Create a routed message (the Anthropic Messages API)",
        response_model=None,
        tags=["Anthropic-compatible"],
    )
    async def create_message(request: Request, principal: Caller, ctx: Ctx) -> None: ...

    return app


@pytest.mark.parametrize("path", [chat.ROUTE, messages.ROUTE])
def test_a_hand_documented_route_has_the_entry_fastapi_writes_for_its_twin(path: str) -> None:
    real: dict[str, Any] = create_app(Settings(_env_file=None)).openapi()
    twin = _openapi(_twins())  # the real document's post-processing too (400s, not 422s)
    assert real["paths"][path] == twin["paths"][path]
    schemas = twin.get("components", {}).get("schemas", {})
    assert {name: real["components"]["schemas"][name] for name in schemas} == schemas
