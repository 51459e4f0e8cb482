"""JSON answers, invalid_json, logprobs, n, stop, reasoning, images and recorded bodies, through the SDKs."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, Field

from router_core.sim import SimProfile, SimWorld, sim_http_client
from router_core.sim.answers import REASONING_TOKENS
from router_core.sim.wire import ANTHROPIC_IMAGE_TOKENS, OPENAI_IMAGE_TOKENS, OPENAI_IMAGE_TOKENS_LOW
from tests.sim.helpers import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    USER,
    USER_ANTHROPIC,
    AnthropicFactory,
    OpenAIFactory,
    chat,
    world_with,
)

REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "score": {"type": "number", "minimum": 0, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "author": {"$ref": "#/$defs/person"},
    },
    "required": ["title", "score", "tags", "author"],
    "additionalProperties": False,
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "role": {"enum": ["writer", "editor"]}},
            "required": ["name", "role"],
            "additionalProperties": False,
        }
    },
}
JSON_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "report", "schema": REPORT_SCHEMA, "strict": True},
}
ANTHROPIC_FORMAT: Any = {"format": {"type": "json_schema", "schema": REPORT_SCHEMA}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


# --- JSON answers --------------------------------------------------------------------------------


async def test_json_schema_answers_validate(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with()
    result = await chat(oai(world), response_format=JSON_FORMAT)
    content = result.choices[0].message.content
    assert content is not None
    assert ": " not in content  # compact
    jsonschema.validate(json.loads(content), REPORT_SCHEMA)
    assert result.usage is not None
    assert result.usage.completion_tokens == -(-len(content) // 4)

    message = await claude(world).messages.create(
        model=ANTHROPIC_MODEL, max_tokens=500, messages=USER_ANTHROPIC, output_config=ANTHROPIC_FORMAT
    )
    block = message.content[0]
    assert block.type == "text"
    jsonschema.validate(json.loads(block.text), REPORT_SCHEMA)
    assert message.stop_reason == "end_turn"


async def test_json_answers_stream_as_text(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with()
    stream = await oai(world).chat.completions.create(
        model=OPENAI_MODEL, messages=USER, response_format=JSON_FORMAT, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    jsonschema.validate(json.loads(text), REPORT_SCHEMA)

    async with claude(world).messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=500, messages=USER_ANTHROPIC, output_config=ANTHROPIC_FORMAT
    ) as events:
        final = await events.get_final_message()
    assert final.content[0].type == "text"
    jsonschema.validate(json.loads(final.content[0].text), REPORT_SCHEMA)


async def test_json_object_answers_an_object(oai: OpenAIFactory) -> None:
    world = world_with(output_tokens=20)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Reply in JSON: who won?"}]
    result = await oai(world).chat.completions.create(
        model=OPENAI_MODEL, messages=messages, response_format={"type": "json_object"}
    )
    value = json.loads(result.choices[0].message.content or "")
    assert list(value) == ["answer"]
    assert value["answer"].startswith("[simulated dep-a] reply in json")

    async with sim_http_client(world) as http:
        no_json_word = await http.post(
            "/dep-a/v1/chat/completions",
            json={"model": OPENAI_MODEL, "messages": USER, "response_format": {"type": "json_object"}},
        )
    assert no_json_word.status_code == 400
    assert no_json_word.json()["error"]["param"] == "messages"


async def test_invalid_json_fault_breaks_only_json_answers(
    oai: OpenAIFactory, claude: AnthropicFactory
) -> None:
    world = world_with(script=["invalid_json", "invalid_json", "invalid_json"])
    client = oai(world)
    broken = await chat(client, response_format=JSON_FORMAT)
    content = broken.choices[0].message.content or ""
    assert broken.choices[0].finish_reason == "stop"
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    good = (await chat(oai(world_with()), response_format=JSON_FORMAT)).choices[0].message.content or ""
    assert good.startswith(content)  # the valid answer, cut in half

    plain = await chat(client)  # asked for no JSON: answered normally
    assert (plain.choices[0].message.content or "").startswith("[simulated dep-a] ")
    streamed = await client.chat.completions.create(
        model=OPENAI_MODEL, messages=USER, response_format=JSON_FORMAT, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert world.stats["dep-a"].by_outcome == {"invalid_json": 2, "ok": 1}

    anthropic_world = SimWorld({"dep-b": SimProfile(invalid_json_rate=1.0)})
    message = await claude(anthropic_world).messages.create(
        model=ANTHROPIC_MODEL, max_tokens=500, messages=USER_ANTHROPIC, output_config=ANTHROPIC_FORMAT
    )
    assert message.content[0].type == "text"
    with pytest.raises(json.JSONDecodeError):
        json.loads(message.content[0].text)
    assert anthropic_world.stats["dep-b"].by_outcome == {"invalid_json": 1}


def test_invalid_json_rate_joins_the_fault_draw() -> None:
    profile = SimProfile(invalid_json_rate=0.25, error_rate=0.5)
    assert profile.fault_weights()["invalid_json"] == 0.25
    with pytest.raises(ValueError, match="sum to at most 1"):
        SimProfile(invalid_json_rate=0.6, error_rate=0.5)


# --- logprobs, n, stop ---------------------------------------------------------------------------


async def test_logprobs_with_top_logprobs(oai: OpenAIFactory) -> None:
    world = world_with(output_tokens=10)
    result = await chat(oai(world), logprobs=True, top_logprobs=3)
    logprobs = result.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    text = result.choices[0].message.content or ""
    assert "".join(entry.token for entry in logprobs.content) == text
    assert len(logprobs.content) == 10
    for entry in logprobs.content:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        values = [top.logprob for top in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert len({top.token for top in entry.top_logprobs}) == 3

    stream = await oai(world).chat.completions.create(
        model=OPENAI_MODEL, messages=USER, logprobs=True, top_logprobs=3, stream=True
    )
    streamed = [
        entry
        async for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or []
    ]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in logprobs.content]

    bare = await chat(oai(world), logprobs=True)
    assert bare.choices[0].logprobs is not None
    assert all(entry.top_logprobs == [] for entry in bare.choices[0].logprobs.content or [])


async def test_n_choices_differ_and_usage_sums(oai: OpenAIFactory) -> None:
    world = world_with(output_tokens=15)
    result = await chat(oai(world), n=3)
    assert [c.index for c in result.choices] == [0, 1, 2]
    texts = [c.message.content for c in result.choices]
    assert len(set(texts)) == 3
    assert texts[0] == (await chat(oai(world))).choices[0].message.content  # choice 0 is the n=1 answer
    assert result.usage is not None
    assert result.usage.completion_tokens == 45

    stream = await oai(world).chat.completions.create(
        model=OPENAI_MODEL, messages=USER, n=3, stream=True, stream_options={"include_usage": True}
    )
    pieces: dict[int, str] = {}
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces[choice.index] = pieces.get(choice.index, "") + (choice.delta.content or "")
    assert [pieces[i] for i in range(3)] == texts
    assert usage is not None
    assert usage.completion_tokens == 45


async def test_stop_sequences_cut_the_text(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with(output_tokens=30)
    result = await chat(oai(world), stop=["quarterly", "never-there"])
    assert result.choices[0].message.content == "[simulated dep-a] summarise the "
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.completion_tokens == 8

    message = await claude(world).messages.create(
        model=ANTHROPIC_MODEL, max_tokens=100, messages=USER_ANTHROPIC, stop_sequences=["report"]
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "report"
    assert message.content[0].type == "text"
    assert message.content[0].text == "[simulated dep-b] summarise the quarterly "

    async with claude(world).messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=100, messages=USER_ANTHROPIC, stop_sequences=["report"]
    ) as stream:
        final = await stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "report")

    untouched = await chat(oai(world), stop="absent")
    assert untouched.usage is not None
    assert untouched.usage.completion_tokens == 30


# --- reasoning and images ------------------------------------------------------------------------


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high", "xhigh"])
async def test_reasoning_tokens_are_reported(oai: OpenAIFactory, effort: Any) -> None:
    result = await chat(oai(world_with(output_tokens=20)), reasoning_effort=effort)
    assert result.usage is not None
    details = result.usage.completion_tokens_details
    assert details is not None
    assert details.reasoning_tokens == REASONING_TOKENS[effort]
    assert result.usage.completion_tokens == 20 + REASONING_TOKENS[effort]


async def test_reasoning_counts_against_max_tokens(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with(output_tokens=20)
    squeezed = await chat(oai(world), reasoning_effort="low", max_completion_tokens=70)
    assert squeezed.usage is not None
    assert squeezed.usage.completion_tokens == 70
    assert squeezed.choices[0].finish_reason == "length"
    assert len(squeezed.choices[0].message.content or "") == 4 * (70 - 64)

    starved = await chat(oai(world), reasoning_effort="high", max_completion_tokens=100)
    assert (starved.choices[0].message.content, starved.choices[0].finish_reason) == ("", "length")

    none = await chat(oai(world), reasoning_effort="none")
    assert none.usage is not None
    assert none.usage.completion_tokens == 20
    assert none.usage.completion_tokens_details is not None
    assert none.usage.completion_tokens_details.reasoning_tokens == 0

    thinking = await claude(world).messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=5000,
        messages=USER_ANTHROPIC,
        thinking={"type": "enabled", "budget_tokens": 2000},
        output_config={"effort": "medium"},
    )
    assert thinking.usage.output_tokens == 20 + REASONING_TOKENS["medium"]
    assert thinking.usage.output_tokens_details is not None
    assert thinking.usage.output_tokens_details.thinking_tokens == REASONING_TOKENS["medium"]


def _openai_image(url: str, detail: str | None = None) -> list[ChatCompletionMessageParam]:
    image: Any = {"url": url} if detail is None else {"url": url, "detail": detail}
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Describe this"}, {"type": "image_url", "image_url": image}],
        }
    ]


async def test_images_count_as_prompt_tokens(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with()
    client = oai(world)
    text_only: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "Describe this"}]}
    ]

    async def prompt_tokens(messages: list[ChatCompletionMessageParam]) -> int:
        result = await client.chat.completions.create(model=OPENAI_MODEL, messages=messages)
        assert result.usage is not None
        return result.usage.prompt_tokens

    base = await prompt_tokens(text_only)
    assert await prompt_tokens(_openai_image("https://example.com/cat.png")) == base + OPENAI_IMAGE_TOKENS
    assert (
        await prompt_tokens(_openai_image("https://example.com/cat.png", "low"))
        == base + OPENAI_IMAGE_TOKENS_LOW
    )
    data_url = f"data:image/png;base64,{PNG}"
    assert await prompt_tokens(_openai_image(data_url, "high")) == base + OPENAI_IMAGE_TOKENS
    assert (OPENAI_IMAGE_TOKENS_LOW, OPENAI_IMAGE_TOKENS, ANTHROPIC_IMAGE_TOKENS) == (85, 765, 1600)

    anthropic_client = claude(world)

    async def input_tokens(blocks: list[Any]) -> int:
        messages: list[MessageParam] = [
            {"role": "user", "content": [{"type": "text", "text": "Describe this"}, *blocks]}
        ]
        result = await anthropic_client.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=10, messages=messages
        )
        return result.usage.input_tokens

    plain = await input_tokens([])
    url_image = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    b64_image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert await input_tokens([url_image]) == plain + ANTHROPIC_IMAGE_TOKENS
    assert await input_tokens([url_image, b64_image]) == plain + 2 * ANTHROPIC_IMAGE_TOKENS


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.[0].content.[0].image_url.url",
        ),
    ],
)
async def test_openai_requests_the_api_would_refuse(body: dict[str, Any], param: str) -> None:
    async with sim_http_client(world_with()) as http:
        response = await http.post(
            "/dep-a/v1/chat/completions", json={"model": OPENAI_MODEL, "messages": USER, **body}
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "greater than or equal to 1024"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "`max_tokens` must be greater"),
        ({"thinking": {"type": "sometimes"}}, "thinking"),
        ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format"),
        ({"stop_sequences": "stop"}, "stop_sequences"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url"}}]}]},
            "source.url.url: Field required",
        ),
    ],
)
async def test_anthropic_requests_the_api_would_refuse(body: dict[str, Any], message: str) -> None:
    request = {"model": ANTHROPIC_MODEL, "max_tokens": 1000, "messages": USER_ANTHROPIC, **body}
    async with sim_http_client(world_with()) as http:
        response = await http.post("/dep-b/v1/messages", json=request)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


# --- determinism and recorded bodies -------------------------------------------------------------


async def test_same_request_and_seed_give_the_same_answer(oai: OpenAIFactory) -> None:
    async def answer(seed: int) -> tuple[Any, ...]:
        client = oai(world_with())
        structured = await chat(client, response_format=JSON_FORMAT, seed=seed, n=2)
        scored = await chat(client, logprobs=True, top_logprobs=2, seed=seed)
        assert scored.choices[0].logprobs is not None
        return (
            [c.message.content for c in structured.choices],
            [e.model_dump() for e in scored.choices[0].logprobs.content or []],
        )

    first = await answer(5)
    assert first == await answer(5)
    assert first[0][0] != first[0][1]


async def test_recorded_request_bodies(oai: OpenAIFactory) -> None:
    world = SimWorld({"dep-a": SimProfile()}, record_requests=2)
    client = oai(world)
    for temperature in (0.1, 0.2, 0.3):
        await chat(client, temperature=temperature, seed=11)
    recorded = world.last_requests("dep-a")
    assert [body["temperature"] for body in recorded] == [0.2, 0.3]  # bounded, oldest first
    assert recorded[-1]["seed"] == 11
    assert recorded[-1]["messages"] == USER
    assert world.last_requests("unknown") == []

    async with sim_http_client(world) as http:
        await http.post("/dep-a/v1/chat/completions", json={"model": OPENAI_MODEL, "messages": USER, "n": 0})
        served = (await http.get("/_sim/requests/dep-a")).json()
        stats = (await http.get("/_sim/stats")).json()
    assert served["requests"][-1]["n"] == 0  # rejected bodies are recorded too
    assert "recorded" not in stats["deployments"]["dep-a"]


# --- the SDKs' structured-output helpers ---------------------------------------------------------


class Step(BaseModel):
    explanation: str
    output: str


class Solution(BaseModel):
    steps: list[Step] = Field(min_length=2)
    final_answer: str
    confidence: float = Field(ge=0, le=1)


class Lookup(BaseModel):
    city: str
    days: int = Field(ge=1, le=7)


async def test_sdk_parse_helpers_accept_the_answers(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with()
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Solve 8x + 7 = -23"}]
    solved = await oai(world).chat.completions.parse(
        model=OPENAI_MODEL, messages=messages, response_format=Solution
    )
    assert isinstance(solved.choices[0].message.parsed, Solution)

    lookup = await oai(world).chat.completions.parse(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "Look up the weather in Paris"}],
        tools=[openai.pydantic_function_tool(Lookup)],
    )
    calls = lookup.choices[0].message.tool_calls
    assert calls is not None
    assert isinstance(calls[0].function.parsed_arguments, Lookup)
    assert world.last_requests("dep-a")[-1]["tools"][0]["function"]["strict"] is True

    # The anthropic SDK moves the bounds into descriptions; the sim reads them back, as a model would.
    parsed = await claude(world).messages.parse(
        model=ANTHROPIC_MODEL,
        max_tokens=1000,
        messages=[{"role": "user", "content": "Solve 8x + 7 = -23"}],
        output_format=Solution,
    )
    assert isinstance(parsed.parsed_output, Solution)
    schema = world.last_requests("dep-b")[-1]["output_config"]["format"]["schema"]
    assert "maximum" not in schema["properties"]["confidence"]
