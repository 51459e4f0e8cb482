"""The Anthropic adapter through the real SDK: the request body it puts on the wire (to the
in-process sim), and Anthropic answers (JSON and SSE bytes shaped as Anthropic's API sends them)
parsed by the SDK and mapped to OpenAI choices and stream deltas, up through the router.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import pytest
from openai.types.chat import ChatCompletionChunk

from router_core import ChatRequest, Router
from router_core.catalog import Deployment
from router_core.models import CompletionResult, Usage
from router_core.providers.anthropic import AnthropicProvider
from router_core.providers.base import Delta, ProviderReply, StreamPart
from router_core.providers.openai import StreamedAnswer
from router_core.sim import SimWorld
from tests.conftest import deployment, make_catalog
from tests.test_anthropic_translation import (
    CATALOG,
    CLAUDE,
    PNG,
    TOOL_USE,
    WEATHER_SCHEMA,
    call,
    message,
    req,
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


def fake_anthropic(respond: Callable[[dict[str, Any]], httpx2.Response]) -> AnthropicProvider:
    """The adapter on the real SDK, its HTTP answered by `respond` (given the request's JSON body)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return respond(json.loads(request.content))

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    client = anthropic.AsyncAnthropic(
        api_key="k", base_url="http://anthropic.test", max_retries=0, http_client=http
    )
    return AnthropicProvider(CLAUDE, client)


def sse(*events: dict[str, Any]) -> httpx2.Response:
    """An SSE response as Anthropic's API sends it: each event named after its payload's type."""
    frames = b"".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events)
    return httpx2.Response(200, content=frames, headers={"content-type": "text/event-stream"})


def block_delta(index: int, **delta: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def tool_stream(*, refusal: bool = False) -> httpx2.Response:
    started = message([], None, usage={"input_tokens": 40, "output_tokens": 1, "cache_read_input_tokens": 8})
    stop = {"stop_reason": "refusal" if refusal else "tool_use", "stop_sequence": None}
    return sse(
        {"type": "message_start", "message": started},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        block_delta(0, type="thinking_delta", thinking="Weather, then time."),
        block_delta(0, type="signature_delta", signature="sig"),
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        block_delta(1, type="text_delta", text="Let me "),
        block_delta(1, type="text_delta", text="check."),
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        },
        block_delta(2, type="input_json_delta", partial_json=""),
        block_delta(2, type="input_json_delta", partial_json='{"city": "Pa'),
        block_delta(2, type="input_json_delta", partial_json='ris"}'),
        {"type": "content_block_stop", "index": 2},
        {
            "type": "content_block_start",
            "index": 3,
            "content_block": {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        },
        {"type": "content_block_stop", "index": 3},
        {
            "type": "message_delta",
            "delta": stop,
            "usage": {"output_tokens": 61, "output_tokens_details": {"thinking_tokens": 9}},
        },
        {"type": "message_stop"},
    )


async def test_a_tool_use_answer_through_the_sdk() -> None:
    seen: list[dict[str, Any]] = []

    def respond(sent: dict[str, Any]) -> httpx2.Response:
        seen.append(sent)
        return httpx2.Response(200, json=message([{"type": "text", "text": "On it."}, TOOL_USE], "tool_use"))

    provider = fake_anthropic(respond)
    reply = await provider.complete(req(tools=[tool("get_weather")]), max_tokens=64, timeout_s=5)
    await provider.aclose()
    assert seen[0]["tools"] == [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    assert reply.finish_reason == "tool_calls"
    assert reply.choices[0].message["tool_calls"] == [call("toolu_1", "get_weather", '{"city": "Zürich"}')]
    assert reply.content == "On it."
    assert reply.model == "claude-x-20990101"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (12, 30)


def as_chunk(choice: dict[str, Any]) -> dict[str, Any]:
    """A `chat.completion.chunk` holding `choice`, as JSON (checked against the SDK's model)."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [choice]}
    ChatCompletionChunk.model_validate(chunk)
    return chunk


async def test_a_streamed_tool_use_answer_relays_openai_tool_call_deltas() -> None:
    provider = fake_anthropic(lambda sent: tool_stream())
    parts: list[StreamPart] = [
        part
        async for part in provider.stream(
            req(tools=[tool("get_weather"), tool("get_time")]), max_tokens=64, timeout_s=5
        )
    ]
    await provider.aclose()
    reply = parts[-1]
    assert isinstance(reply, ProviderReply)
    relayed = parts[:-1]
    assert relayed == [
        "Let me ",
        "check.",
        Delta(
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
            }
        ),
        Delta(
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}}
        ),
        Delta({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}}),
        Delta(
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        }
                    ]
                },
            }
        ),
        # No input pieces for a call without arguments: `{}` at the block's end, as the final message has.
        Delta({"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}}),
    ]
    assert reply.finish_reason == "tool_calls"
    assert reply.choices[0].message == {
        "role": "assistant",
        "content": "Let me check.",
        "refusal": None,
        "tool_calls": [
            call("toolu_1", "get_weather", '{"city": "Paris"}'),
            call("toolu_2", "get_time", "{}"),
        ],
    }
    assert reply.usage == Usage(input_tokens=48, output_tokens=61, cache_read_tokens=8, reasoning_tokens=9)
    # The relayed parts are valid OpenAI chunk choices that add up to the final message.
    rebuilt = StreamedAnswer()
    for part in relayed:
        assert not isinstance(part, ProviderReply)
        rebuilt.add(
            as_chunk({"index": 0, "delta": {"content": part}} if isinstance(part, str) else part.choice)
        )
    rebuilt.add(as_chunk({"index": 0, "delta": {}, "finish_reason": reply.finish_reason}))
    assert rebuilt.choices() == reply.choices


async def test_a_streamed_refusal_ends_as_a_refusal() -> None:
    provider = fake_anthropic(lambda sent: tool_stream(refusal=True))
    parts = [part async for part in provider.stream(req(), max_tokens=64, timeout_s=5)]
    await provider.aclose()
    reply = parts[-1]
    assert isinstance(reply, ProviderReply)
    assert reply.finish_reason == "content_filter"
    assert reply.choices[0].message["content"] is None
    assert reply.choices[0].message["refusal"] == "Let me check."


async def test_the_router_streams_an_anthropic_tool_call() -> None:
    """The first part of a stream may be a tool-call Delta: the router relays it and the result."""

    def respond(sent: dict[str, Any]) -> httpx2.Response:
        return sse(
            {"type": "message_start", "message": message([], None)},
            {"type": "content_block_start", "index": 0, "content_block": TOOL_USE | {"input": {}}},
            block_delta(0, type="input_json_delta", partial_json='{"city": "Oslo"}'),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
            {"type": "message_stop"},
        )

    catalog = make_catalog([deployment("claude-a", kind="anthropic", model="claude-x")])
    claude: Deployment = catalog["claude-a"]
    provider = fake_anthropic(respond)
    provider.deployment = claude
    async with Router(catalog, {"claude-a": provider}) as router:
        parts = [
            part async for part in router.stream(req(tools=[tool("get_weather")], tool_choice="required"))
        ]
    result = parts[-1]
    assert isinstance(result, CompletionResult)
    assert all(isinstance(part, Delta) for part in parts[:-1])
    assert len(parts) == 3
    assert result.finish_reason == "tool_calls"
    assert result.choices[0].message["tool_calls"] == [call("toolu_1", "get_weather", '{"city": "Oslo"}')]
    assert result.usage.output_tokens == 9
