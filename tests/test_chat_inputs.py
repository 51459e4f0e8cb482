"""The whole Chat Completions language in batch lines and chat bodies: every field reaches the request,
and every nested problem (tool schemas, response_format, content parts, tool_call_id) names its path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from producer.inputs import LineError, parse_chat_body, parse_line
from router_core.models import Strategy
from tests.test_inputs import error, item, openai_line

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
}
CONVERSATION = [
    {"role": "developer", "content": "Answer in JSON."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is the weather here?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/oslo.png", "detail": "low"}},
        ],
    },
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 4}'},
]
EVERY_FIELD: dict[str, Any] = {
    "messages": CONVERSATION,
    "model": "router:quality",
    "max_completion_tokens": 300,
    "temperature": 0.2,
    "top_p": 0.9,
    "n": 3,
    "stop": ["\n\n", "END"],
    "seed": 42,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "top_logprobs": 2,
    "tools": [WEATHER],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": {"type": "object"}, "strict": True},
    },
    "reasoning_effort": "low",
    "service_tier": "flex",
    "user": "end-user-7",
    "metadata": {"team": "search", "env": "prod"},
}


def assert_every_field(request: Any) -> None:
    assert request.model == "auto"
    assert request.preferences.strategy is Strategy.QUALITY
    assert request.max_tokens == 300
    assert (request.temperature, request.top_p, request.n, request.seed) == (0.2, 0.9, 3, 42)
    assert request.stop == ["\n\n", "END"]
    assert (request.presence_penalty, request.frequency_penalty) == (0.5, -0.5)
    assert request.logit_bias == {"50256": -100}
    assert (request.logprobs, request.top_logprobs) == (True, 2)
    assert [t.function.name for t in request.tools] == ["get_weather"]
    assert request.tool_choice.function.name == "get_weather"
    assert request.parallel_tool_calls is False
    assert request.response_format.json_schema.name == "weather"
    assert (request.reasoning_effort, request.service_tier) == ("low", "flex")
    assert request.user == "end-user-7"
    assert request.metadata == {"team": "search", "env": "prod"}
    assert request.messages[1].image_tokens() > 0
    assert request.messages[2].tool_calls[0].id == "call_1"
    assert request.messages[3].tool_call_id == "call_1"


def test_every_chat_completions_field_reaches_the_request_in_both_formats() -> None:
    assert_every_field(item(openai_line(**EVERY_FIELD, store=True)).request)
    short = {k: v for k, v in EVERY_FIELD.items()} | {"custom_id": "s-1"}
    assert_every_field(item(json.dumps(short)).request)


def test_the_chat_body_takes_every_field_and_leaves_streaming_to_the_api() -> None:
    request, problems = parse_chat_body(EVERY_FIELD | {"stream": True, "stream_options": {}, "store": False})
    assert problems == []
    assert_every_field(request)
    assert parse_chat_body(EVERY_FIELD | {"audio": {}})[1] == [
        "audio is not supported: routeq cannot honour it"
    ]


def test_store_is_only_an_openai_body_key() -> None:
    assert error('{"prompt": "hi", "store": true}').reason == "unknown field 'store'"


TOOL_NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
            "body.tools.0.function.name: String should match pattern '^[A-Za-z0-9_-]{1,64}$'",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}]},
            "body.tools.0.function.parameters: not a valid JSON Schema at type: 'wat' is not valid",
        ),
        ({"tools": [WEATHER, WEATHER]}, "body.tools: each function name must be unique"),
        ({"tool_choice": "auto"}, "body.tool_choice: needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "body.tool_choice: names 'nope', which is not in tools",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "a b"}}},
            "body.tool_choice.function.name: String should match pattern",
        ),
        (
            {"tools": [WEATHER], "tool_choice": "sometimes"},
            "body.tool_choice: Input should be 'none', 'auto'",
        ),
        ({"response_format": {"type": "json_schema"}}, "body.response_format: type 'json_schema' needs"),
        (
            {"response_format": {"type": "xml"}},
            "body.response_format.type: Input should be 'text', 'json_object'",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": 5}}}},
            "body.response_format.json_schema.schema: not a valid JSON Schema",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}
                ]
            },
            "body.messages.0.content.0.image_url.url: String should match pattern",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "body.messages.0.content.0: an 'image_url' part needs 'image_url'",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "r"}]},
            "body.messages.1: a 'tool' message needs 'tool_call_id'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "tool", "tool_call_id": "c9", "content": "r"},
                ]
            },
            "body.messages.1.tool_call_id: 'c9' answers no earlier assistant tool call",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]},
            "body.messages.0.tool_calls.0.function.arguments: Field required",
        ),
        ({"stop": [""]}, "body.stop.0: String should have at least 1 character"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "body.stop: List should have at most 4 items"),
        ({"top_logprobs": 2}, "body.top_logprobs: needs logprobs: true"),
        ({"logit_bias": {"7": 101}}, "body.logit_bias.7: Input should be less than or equal to 100"),
        ({"presence_penalty": 3}, "body.presence_penalty: Input should be less than or equal to 2"),
        ({"reasoning_effort": "max"}, "body.reasoning_effort: Input should be 'none', 'minimal'"),
        ({"service_tier": "gold"}, "body.service_tier: Input should be 'auto', 'default'"),
        ({"user": "u" * 257}, "body.user: String should have at most 256 characters"),
        ({"metadata": {"k": 1}}, "body.metadata.k: Input should be a valid string"),
        ({"metadata": {"k" * 65: "v"}}, "body.metadata: key 'kkkk"),
        (
            {"metadata": {str(i): "v" for i in range(17)}},
            "body.metadata: Dictionary should have at most 16 items",
        ),
    ],
)
def test_nested_fields_are_named_by_their_path(body: dict[str, Any], reason: str) -> None:
    got = parse_line(openai_line(**body), 7)
    assert isinstance(got, LineError), got
    assert str(got).startswith(f"line 7: {reason}")
    assert "; body." not in got.reason  # one problem, said once: no branch of a union the input did not take


def test_a_union_shows_every_branch_when_the_input_took_none() -> None:
    assert error(openai_line(stop=5)).reason == (
        "body.stop: Input should be a valid string or Input should be a valid list"
    )
