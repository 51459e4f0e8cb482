"""The Anthropic adapter's translation: a Chat Completions request as Messages API arguments, an
Anthropic `Message` as OpenAI choices. Through the SDK and the router: test_anthropic_wire.py.
"""

from __future__ import annotations

import copy
from typing import Any

import anthropic
import pytest
from anthropic.types import Message as AnthropicMessage

from router_core import BadRequestError, ChatRequest
from router_core.models import Usage
from router_core.providers.anthropic_translate import (
    FINISH_REASONS,
    JSON_MODE_INSTRUCTION,
    anthropic_body,
    openai_choice,
    to_anthropic_messages,
    to_usage,
)
from tests.conftest import deployment, make_catalog

CATALOG = make_catalog(
    [deployment("claude-a", kind="anthropic", model="claude-x"), deployment("gpt-b", kind="openai")]
)
CLAUDE = CATALOG["claude-a"]
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def req(**fields: Any) -> ChatRequest:
    fields.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return ChatRequest.model_validate(fields)


def body(**fields: Any) -> dict[str, Any]:
    return anthropic_body(req(**fields), CLAUDE, 256)


def tool(name: str, **function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **function}}


def call(id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- request: messages ----------------------------------------------------------------------------


def test_system_and_developer_messages_join_into_system() -> None:
    system, turns = to_anthropic_messages(
        req(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "Hi"},
            ]
        )
    )
    assert system == "Be brief.\n\nUse French."
    assert turns == [{"role": "user", "content": "Hi"}]  # one text block stays a plain string


def test_user_parts_become_text_and_image_blocks() -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://img.example/cat.jpg", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "text", "text": "  "},  # Anthropic refuses whitespace-only text blocks
    ]
    _, turns = to_anthropic_messages(req(messages=[{"role": "user", "content": content}]))
    assert turns == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "url", "url": "https://img.example/cat.jpg"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
            ],
        }
    ]


def test_tool_calls_and_parallel_results_keep_alternation() -> None:
    _, turns = to_anthropic_messages(
        req(
            messages=[
                {"role": "user", "content": "Weather and time in Paris?"},
                {
                    "role": "assistant",
                    "content": "Checking both.",
                    "tool_calls": [
                        call("call_1", "get_weather", '{"city": "Paris"}'),
                        call("call_2", "get_time", ""),  # no arguments at all: an empty input
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:05"}]},
                {"role": "user", "content": "And tomorrow?"},
                {"role": "user", "content": ""},  # empty: dropped
            ]
        )
    )
    assert turns == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ],
        },
        {  # both results and the next question: one user turn, the results first
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "14:05"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


def test_consecutive_turns_of_one_role_merge() -> None:
    _, turns = to_anthropic_messages(
        req(
            messages=[
                {"role": "user", "content": "First."},
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Second."},
                {"role": "assistant", "content": "A"},
                {"role": "assistant", "content": "B"},
            ]
        )
    )
    assert turns == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "First."}, {"type": "text", "text": "Second."}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
    ]


def test_system_messages_alone_are_refused() -> None:
    with pytest.raises(BadRequestError, match="messages: nothing but system messages"):
        body(messages=[{"role": "system", "content": "Say hello."}])


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ("[1, 2]", "an array"),
        ("{not json", "not valid JSON"),
        ('"x"', "a string"),
        ("null", "null"),
        ("2.5", "a number"),
    ],
)
def test_tool_call_arguments_that_are_not_an_object_are_refused(arguments: str, problem: str) -> None:
    request = req(
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "tool_calls": [call("c0", "f", "{}"), call("c1", "f", arguments)]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
    )
    with pytest.raises(BadRequestError, match=rf"messages\.1\.tool_calls\.1\.function\.arguments: {problem}"):
        anthropic_body(request, CLAUDE, 256)


# --- request: tools, options -------------------------------------------------------------------


def test_tools_translate_with_their_schemas() -> None:
    strict_schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1}, "note": {"type": ["string", "null"]}},
        "required": ["n", "note"],
        "additionalProperties": False,
    }
    sent = body(
        tools=[
            tool("get_weather", description="Weather for a city", parameters=WEATHER_SCHEMA),
            tool("get_time"),
            tool("count", parameters=strict_schema, strict=True),
        ]
    )
    assert sent["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        {  # strict: in the subset Anthropic's strict tools accept (as the SDK's transform_schema makes it)
            "name": "count",
            "input_schema": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "description": "{minimum: 1}"},
                    "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
                "additionalProperties": False,
                "required": ["n", "note"],
            },
            "strict": True,
        },
    ]
    assert "tool_choice" not in sent


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "f"}},
            False,
            {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),
        (None, True, None),  # parallel use is Anthropic's default
    ],
)
def test_tool_choice_and_parallel_tool_calls(
    tool_choice: Any, parallel: bool | None, expected: dict[str, Any] | None
) -> None:
    sent = body(tools=[tool("f")], tool_choice=tool_choice, parallel_tool_calls=parallel)
    assert sent.get("tool_choice") == expected


@pytest.mark.parametrize(("stop", "expected"), [("END", ["END"]), (["a", "b"], ["a", "b"]), ("", None)])
def test_stop_becomes_stop_sequences(stop: Any, expected: list[str] | None) -> None:
    assert body(stop=stop).get("stop_sequences") == expected


def test_json_schema_is_native_structured_output() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Z]"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "extra": {"type": "object", "properties": {"k": {"type": ["number", "null"]}}},
        },
        "required": ["name", "tags"],
    }
    request = req(
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    )
    before = copy.deepcopy(schema)
    sent = anthropic_body(request, CLAUDE, 256)
    assert sent["output_config"] == {
        "format": {
            "type": "json_schema",
            "schema": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "{pattern: ^[A-Z]}"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "extra": {
                        "type": "object",
                        "properties": {"k": {"anyOf": [{"type": "number"}, {"type": "null"}]}},
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
                "required": ["name", "tags"],
            },
        }
    }
    assert "system" not in sent
    assert request.output_schema == before  # the router checks answers against the original


def test_a_schema_anthropic_cannot_take_is_refused_by_field() -> None:
    schema = {"type": "object", "properties": {"anything": {}}}  # valid JSON Schema, no type to constrain
    with pytest.raises(BadRequestError, match=r"response_format\.json_schema\.schema: .*must have a 'type'"):
        body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})


def test_json_mode_is_an_instruction_not_a_schema() -> None:
    """An object schema without properties would admit only `{}` under constrained decoding."""
    sent = body(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "List 3 colours"}],
        response_format={"type": "json_object"},
    )
    assert "output_config" not in sent
    assert sent["system"] == f"Be brief.\n\n{JSON_MODE_INSTRUCTION}"
    assert body(response_format={"type": "json_object"})["system"] == JSON_MODE_INSTRUCTION
    assert "system" not in body(response_format={"type": "text"})


@pytest.mark.parametrize(
    ("effort", "expected"),
    [
        ("minimal", "low"),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("xhigh", "xhigh"),
        ("none", None),
    ],
)
def test_reasoning_effort_becomes_output_effort(effort: str, expected: str | None) -> None:
    assert body(reasoning_effort=effort).get("output_config", {}).get("effort") == expected


def test_user_model_max_tokens_and_service_tier() -> None:
    sent = body(user="user-42", service_tier="auto", metadata={"team": "search"})
    assert sent == {
        "model": "claude-x",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hi"}],
        "metadata": {"user_id": "user-42"},  # the request's metadata has no Anthropic counterpart
        "service_tier": "auto",
    }
    assert body(service_tier="default")["service_tier"] == "standard_only"
    with pytest.raises(BadRequestError, match="service_tier: Anthropic has no 'flex' tier"):
        body(service_tier="flex")


# --- answer ---------------------------------------------------------------------------------------


def message(
    content: list[dict[str, Any]], stop_reason: str | None = "end_turn", **extra: Any
) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-20990101",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 30},
        **extra,
    }


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Zürich"}}


def test_text_and_tool_use_become_content_and_tool_calls() -> None:
    answer = AnthropicMessage.model_validate(
        message(
            [
                {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                TOOL_USE,
            ],
            "tool_use",
        )
    )
    choice = openai_choice(answer)
    assert choice.finish_reason == "tool_calls"
    assert choice.message == {
        "role": "assistant",
        "content": "Let me check.",  # the thinking block is not part of the answer
        "refusal": None,
        "tool_calls": [call("toolu_1", "get_weather", '{"city": "Zürich"}')],
    }
    only_calls = openai_choice(AnthropicMessage.model_validate(message([TOOL_USE], "tool_use")))
    assert only_calls.message["content"] is None


@pytest.mark.parametrize(("stop_reason", "finish"), [*FINISH_REASONS.items(), (None, None)])
def test_stop_reasons_become_finish_reasons(stop_reason: str | None, finish: str | None) -> None:
    choice = openai_choice(
        AnthropicMessage.model_validate(message([{"type": "text", "text": "x"}], stop_reason))
    )
    assert choice.finish_reason == finish


def test_a_refusal_is_reported_as_openai_does() -> None:
    refused = openai_choice(
        AnthropicMessage.model_validate(
            message([{"type": "text", "text": "I can't help with that."}], "refusal")
        )
    )
    assert refused.finish_reason == "content_filter"
    assert refused.message["content"] is None
    assert refused.message["refusal"] == "I can't help with that."
    silent = openai_choice(
        AnthropicMessage.model_validate(
            message(
                [], "refusal", stop_details={"type": "refusal", "category": "cyber", "explanation": "Exploit"}
            )
        )
    )
    assert silent.message["refusal"] == "Exploit"


def test_thinking_tokens_are_reasoning_tokens() -> None:
    usage = to_usage(
        anthropic.types.Usage.model_validate(
            {
                "input_tokens": 10,
                "output_tokens": 50,
                "cache_read_input_tokens": 100,
                "output_tokens_details": {"thinking_tokens": 20},
            }
        )
    )
    assert usage == Usage(input_tokens=110, output_tokens=50, cache_read_tokens=100, reasoning_tokens=20)
