"""Tool calls through the real SDKs: round trips, streams, tool_choice, and what the APIs would refuse."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import jsonschema
import openai
import pytest
from anthropic.types import Message, MessageParam, ToolParam
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolParam
from openai.types.chat.chat_completion_message_function_tool_call import Function

from router_core.sim import sim_http_client
from tests.sim.helpers import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    AnthropicFactory,
    OpenAIFactory,
    world_with,
)

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "when": {"type": "string", "format": "date"},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
    "required": ["query"],
}
OPENAI_TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the documentation",
            "parameters": SEARCH_SCHEMA,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather forecast for a city",
            "parameters": WEATHER_SCHEMA,
            "strict": True,
        },
    },
]
ANTHROPIC_TOOLS: list[ToolParam] = [
    {"name": "search_docs", "description": "Search the documentation", "input_schema": SEARCH_SCHEMA},
    {
        "name": "get_weather",
        "description": "Current weather forecast for a city",
        "input_schema": WEATHER_SCHEMA,
    },
]
ASK = "What is the weather forecast in Paris tomorrow?"
TOOL_RESULT = "Sunny with 24 degrees and light wind"


def _function(completion: ChatCompletion, index: int = 0) -> Function:
    """The function called by choice `index`, which must be a (single) function tool call."""
    calls = completion.choices[index].message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    return call.function


def _openai_history(call_id: str, name: str, arguments: str) -> list[ChatCompletionMessageParam]:
    return [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": TOOL_RESULT},
    ]


async def test_openai_tool_call_round_trip(oai: OpenAIFactory) -> None:
    client = oai(world_with(output_tokens=12))
    raw = await client.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": ASK}], tools=OPENAI_TOOLS
    )
    ChatCompletion.model_validate(json.loads(raw.http_response.content))
    first = raw.parse()
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"  # shares "weather", "forecast" with the prompt
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert first.usage is not None
    assert first.usage.completion_tokens == -(-len(call.function.arguments) // 4)

    answer = await client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=_openai_history(call.id, call.function.name, call.function.arguments),
        tools=OPENAI_TOOLS,
    )
    final = answer.choices[0]
    assert final.finish_reason == "stop"
    assert final.message.tool_calls is None
    assert final.message.content is not None
    assert "Sunny with 24 degrees" in final.message.content


async def test_openai_streamed_tool_call_reassembles(oai: OpenAIFactory) -> None:
    client = oai(world_with())
    stream = await client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": ASK}],
        tools=OPENAI_TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    opening = deltas[0].tool_calls
    assert opening is not None
    assert opening[0].id is not None
    assert opening[0].function is not None
    assert (opening[0].function.name, opening[0].function.arguments) == ("get_weather", "")
    pieces = [
        d.tool_calls[0].function.arguments or ""
        for d in deltas[1:]
        if d.tool_calls and d.tool_calls[0].function
    ]
    assert len(pieces) > 1
    jsonschema.validate(json.loads("".join(pieces)), WEATHER_SCHEMA)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None

    # The SDK's own accumulator agrees.
    async with client.chat.completions.stream(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": ASK}], tools=OPENAI_TOOLS
    ) as helper:
        final = await helper.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER_SCHEMA)
    assert final.choices[0].finish_reason == "tool_calls"


async def test_anthropic_tool_use_round_trip(claude: AnthropicFactory) -> None:
    client = claude(world_with(output_tokens=12))
    ask: list[MessageParam] = [{"role": "user", "content": ASK}]
    raw = await client.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL, max_tokens=500, messages=ask, tools=ANTHROPIC_TOOLS
    )
    Message.model_validate(json.loads(raw.http_response.content))
    first = await raw.parse()
    assert first.stop_reason == "tool_use"
    block = first.content[0]
    assert block.type == "tool_use"
    assert block.id.startswith("toolu_")
    assert block.name == "get_weather"
    jsonschema.validate(block.input, WEATHER_SCHEMA, format_checker=jsonschema.FormatChecker())

    history: list[MessageParam] = [
        *ask,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": TOOL_RESULT}],
        },
    ]
    answer = await client.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=500, messages=history, tools=ANTHROPIC_TOOLS
    )
    assert answer.stop_reason == "end_turn"
    text = answer.content[0]
    assert text.type == "text"
    assert "Sunny with 24 degrees" in text.text
    assert answer.usage.input_tokens > first.usage.input_tokens  # the call and its result count


async def test_anthropic_streamed_tool_use_accumulates(claude: AnthropicFactory) -> None:
    client = claude(world_with())
    async with client.messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=500,
        messages=[{"role": "user", "content": ASK}],
        tools=ANTHROPIC_TOOLS,
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    partials = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(partials) > 1
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use"
    assert block.input == json.loads("".join(partials))
    jsonschema.validate(block.input, WEATHER_SCHEMA)

    plain = await client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=500,
        messages=[{"role": "user", "content": ASK}],
        tools=ANTHROPIC_TOOLS,
    )
    assert plain.content[0].type == "tool_use"
    assert plain.content[0].input == block.input  # streamed or not, the same arguments


async def test_tool_choice_none_forced_and_required(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with()
    client = oai(world)
    user: list[ChatCompletionMessageParam] = [{"role": "user", "content": ASK}]

    text = await client.chat.completions.create(
        model=OPENAI_MODEL, messages=user, tools=OPENAI_TOOLS, tool_choice="none"
    )
    assert text.choices[0].message.tool_calls is None
    assert text.choices[0].finish_reason == "stop"

    forced = await client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=user,
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "search_docs"}},
    )
    function = _function(forced)
    assert function.name == "search_docs"
    jsonschema.validate(json.loads(function.arguments), SEARCH_SCHEMA)

    # `required` calls again even after a tool result; `auto` would answer in text.
    history = _openai_history("call_1", "get_weather", '{"city":"Paris","unit":"celsius"}')
    again = await client.chat.completions.create(
        model=OPENAI_MODEL, messages=history, tools=OPENAI_TOOLS, tool_choice="required"
    )
    assert again.choices[0].finish_reason == "tool_calls"

    allowed = await client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=user,
        tools=OPENAI_TOOLS,
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": "search_docs"}}],
            },
        },
    )
    assert _function(allowed).name == "search_docs"

    anthropic_client = claude(world)
    ask: list[MessageParam] = [{"role": "user", "content": "hello there"}]
    any_tool = await anthropic_client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=100,
        messages=ask,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
    )
    assert any_tool.stop_reason == "tool_use"
    assert any_tool.content[0].type == "tool_use"
    assert any_tool.content[0].name == "search_docs"  # nothing in common with the prompt: the first
    named = await anthropic_client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=100,
        messages=ask,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    assert named.content[0].type == "tool_use"
    assert named.content[0].name == "get_weather"
    none = await anthropic_client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=100,
        messages=ask,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "none"},
    )
    assert none.content[0].type == "text"


async def test_tool_arguments_are_deterministic(oai: OpenAIFactory) -> None:
    async def arguments(seed: int) -> list[str]:
        client = oai(world_with())
        result = await client.chat.completions.create(
            model=OPENAI_MODEL,
            messages=[{"role": "user", "content": ASK}],
            tools=OPENAI_TOOLS,
            seed=seed,
            n=3,
        )
        return [_function(result, c.index).arguments for c in result.choices]

    first = await arguments(7)
    assert first == await arguments(7)
    assert len(set(first)) > 1  # the choices vary
    for text in first:
        jsonschema.validate(json.loads(text), WEATHER_SCHEMA)


async def test_a_tool_call_cut_by_max_tokens(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with()
    result = await oai(world).chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": ASK}], tools=OPENAI_TOOLS, max_tokens=3
    )
    assert result.choices[0].finish_reason == "length"
    assert len(_function(result).arguments) == 12
    cut = await claude(world).messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=3,
        messages=[{"role": "user", "content": ASK}],
        tools=ANTHROPIC_TOOLS,
    )
    assert cut.stop_reason == "max_tokens"
    assert cut.content[0].type == "tool_use"
    assert cut.content[0].input == {}


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": ASK}], **extra}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tools": []}, "tools"),
        (
            {"tools": OPENAI_TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": OPENAI_TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": OPENAI_TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
async def test_openai_tool_requests_the_api_would_refuse(extra: dict[str, Any], param: str) -> None:
    world = world_with()
    async with sim_http_client(world) as http:
        response = await http.post("/dep-a/v1/chat/completions", json=_body(**extra))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert world.stats["dep-a"].by_outcome == {"bad_request": 1}


async def test_a_tool_message_must_answer_an_earlier_call(
    oai: OpenAIFactory, claude: AnthropicFactory
) -> None:
    world = world_with()
    orphan: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": ASK},
        {"role": "tool", "tool_call_id": "call_missing", "content": TOOL_RESULT},
    ]
    with pytest.raises(openai.BadRequestError) as openai_exc:
        await oai(world).chat.completions.create(model=OPENAI_MODEL, messages=orphan, tools=OPENAI_TOOLS)
    assert openai_exc.value.param == "messages.[1].tool_call_id"

    orphan_result: list[MessageParam] = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": "Let me check."},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_missing", "content": "x"}],
        },
    ]
    with pytest.raises(anthropic.BadRequestError, match="unexpected `tool_use_id`"):
        await claude(world).messages.create(model=ANTHROPIC_MODEL, max_tokens=10, messages=orphan_result)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": ANTHROPIC_TOOLS}, "not found"),
        ({"tool_choice": {"type": "any"}}, "requires `tools`"),
        ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "input_schema.type"),
        ({"tools": [{"name": "f"}]}, "input_schema: Field required"),
        ({"tools": [{"name": "f", "input_schema": {"type": "object", "required": "x"}}]}, "Invalid schema"),
    ],
)
async def test_anthropic_tool_requests_the_api_would_refuse(extra: dict[str, Any], message: str) -> None:
    body = {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": ASK}],
        **extra,
    }
    async with sim_http_client(world_with()) as http:
        response = await http.post("/dep-b/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert message in response.json()["error"]["message"]


async def test_a_schema_with_no_instance_is_refused_up_front() -> None:
    unsatisfiable = {"type": "object", "properties": {"x": False}, "required": ["x"]}
    tools = [{"type": "function", "function": {"name": "f", "parameters": unsatisfiable}}]
    world = world_with(script=["server_error"])
    async with sim_http_client(world) as http:
        response = await http.post("/dep-a/v1/chat/completions", json=_body(tools=tools))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools[0].function.parameters"
    assert "Invalid schema for function 'f'" in response.json()["error"]["message"]
    assert world.stats["dep-a"].by_outcome == {"bad_request": 1}  # the script is untouched
