"""Every Chat Completions field a request sets reaches the OpenAI request body, as the SDK sends it.

The adapter is called through the router over the official openai SDK's real HTTP code path to the
in-process sim; a recording transport keeps the JSON body that went over the wire.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx2
import pytest

from router_core import ChatRequest, RouteqError, Router
from router_core.sim import SimWorld
from tests.conftest import deployment, make_catalog
from tests.test_providers import RecordingTransport, direct_provider

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"enum": ["positive", "negative"]}},
    "required": ["sentiment"],
    "additionalProperties": False,
}

# Each field with a value, and what the OpenAI body must carry for it.
FIELDS: dict[str, Any] = {
    "temperature": 0.4,
    "top_p": 0.8,
    "stop": ["\n\n", "END"],
    "seed": 42,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "top_logprobs": 3,
    "tools": [WEATHER],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "user": "end-user-7",
    "metadata": {"team": "search", "run": "nightly"},
    "service_tier": "flex",
}


async def sent_body(request: ChatRequest, **dep: Any) -> dict[str, Any]:
    catalog = make_catalog([deployment("dep-a", kind="openai", model="gpt-4o-mini", price=None, **dep)])
    transport = RecordingTransport(SimWorld({"dep-a": catalog["dep-a"].sim}))
    http = httpx2.AsyncClient(transport=transport, base_url="http://sim.routeq.invalid")
    async with Router(catalog, {"dep-a": direct_provider(catalog["dep-a"], http)}) as router:
        with contextlib.suppress(RouteqError):  # the answer does not matter here, only what was sent
            await router.complete(request)
    assert transport.bodies, "nothing was sent"
    return transport.bodies[0]


@pytest.mark.parametrize("name", list(FIELDS))
async def test_each_field_reaches_the_openai_body(name: str) -> None:
    fields = {name: FIELDS[name]}
    if name == "top_logprobs":
        fields["logprobs"] = True
    if name in ("tool_choice", "parallel_tool_calls"):
        fields["tools"] = [WEATHER]
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}], **fields})
    body = await sent_body(request)
    for key, value in fields.items():
        assert body[key] == value, key


async def test_response_format_max_tokens_n_and_reasoning_reach_the_body() -> None:
    request = ChatRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "Rate: great film"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "rating", "schema": SCHEMA, "strict": True},
            },
            "max_tokens": 64,
            "n": 2,
            "reasoning_effort": "low",
        }
    )
    body = await sent_body(request, features=["json_schema", "n", "reasoning"])
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "rating", "schema": SCHEMA, "strict": True},
    }
    assert body["max_completion_tokens"] == 64
    assert body["n"] == 2  # native n: one call asks for both answers
    assert body["reasoning_effort"] == "low"


async def test_messages_with_images_tool_calls_and_tool_results_reach_the_body() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where is this, and what is the weather?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/oslo.jpg", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4C, snow"},
    ]
    request = ChatRequest.model_validate({"messages": messages, "tools": [WEATHER]})
    body = await sent_body(request)
    assert body["messages"] == [
        messages[0],
        messages[1],
        {"role": "assistant", "tool_calls": [call]},
        messages[3],
    ]
