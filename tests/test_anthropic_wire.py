"""The Anthropic adapter through the real SDK: the request body it puts on the wire (to the
in-process sim), and a request that does not translate failing over before anything is sent.
"""

from __future__ import annotations

import httpx2
import pytest

from router_core import ChatRequest, Router
from router_core.providers.base import ProviderReply
from router_core.sim import SimWorld
from tests.test_anthropic_translation import (
    CATALOG,
    CLAUDE,
    PNG,
    WEATHER_SCHEMA,
    call,
    tool,
)
from tests.test_providers import RecordingTransport, direct_provider

FULL_REQUEST = {
    "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where is this, and what is the weather there?"},
                {"type": "image_url", "image_url": {"url": "https://img.example/street.jpg"}},
                {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
            ],
        },
        {"role": "assistant", "tool_calls": [call("call_1", "get_weather", '{"city": "Paris"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24°C"},
    ],
    "tools": [tool("get_weather", description="Current weather", parameters=WEATHER_SCHEMA)],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "stop": ["\n\nHuman:"],
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "report",
            "schema": {
                "type": "object",
                "properties": {"summary": {"type": "string"}},
                "required": ["summary"],
            },
        },
    },
    "reasoning_effort": "medium",
    "user": "user-42",
    "max_tokens": 300,
}
FULL_WIRE_BODY = {
    "model": "claude-x",
    "max_tokens": 300,
    "system": "You are a weather bot.",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where is this, and what is the weather there?"},
                {"type": "image", "source": {"type": "url", "url": "https://img.example/street.jpg"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "Sunny, 24°C"}],
        },
    ],
    "tools": [{"name": "get_weather", "description": "Current weather", "input_schema": WEATHER_SCHEMA}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "stop_sequences": ["\n\nHuman:"],
    "output_config": {
        "format": {
            "type": "json_schema",
            "schema": {
                "type": "object",
                "properties": {"summary": {"type": "string"}},
                "additionalProperties": False,
                "required": ["summary"],
            },
        },
        "effort": "medium",
    },
    "metadata": {"user_id": "user-42"},
}


@pytest.mark.parametrize("stream", [False, True])
async def test_the_whole_request_reaches_the_wire_as_anthropic_expects(stream: bool) -> None:
    transport = RecordingTransport(SimWorld({"claude-a": CLAUDE.sim}))
    provider = direct_provider(
        CLAUDE, httpx2.AsyncClient(transport=transport, base_url="http://sim.routeq.invalid")
    )
    request = ChatRequest.model_validate(FULL_REQUEST)
    if stream:
        parts = [part async for part in provider.stream(request, max_tokens=300, timeout_s=5)]
        assert isinstance(parts[-1], ProviderReply)
    else:
        await provider.complete(request, max_tokens=300, timeout_s=5)
    await provider.aclose()
    assert transport.bodies == [{**FULL_WIRE_BODY, **({"stream": True} if stream else {})}]


async def test_an_untranslatable_request_fails_over_before_sending() -> None:
    transport = RecordingTransport(SimWorld({id: CATALOG[id].sim for id in CATALOG}))
    http = httpx2.AsyncClient(transport=transport, base_url="http://sim.routeq.invalid")
    providers = {id: direct_provider(CATALOG[id], http) for id in CATALOG}
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "tool_calls": [call("c1", "f", "[1]")]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
            "tools": [tool("f")],
            "preferences": {"strategy": "fallback_chain", "chain": ["claude-a", "gpt-b"]},
        }
    )
    async with Router(CATALOG, providers) as router:
        result = await router.complete(request)
    assert result.deployment == "gpt-b"
    assert [(a.deployment, a.error_class) for a in result.attempts] == [
        ("claude-a", "BadRequestError"),
        ("gpt-b", None),
    ]
    assert "messages.1.tool_calls.0.function.arguments" in (result.attempts[0].error or "")
    assert len(transport.bodies) == 1  # nothing was sent to Anthropic
    assert transport.bodies[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == "[1]"
