"""The simulated provider world through the real openai / anthropic SDKs: answers, streams, faults."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import Message, MessageParam
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from router_core.clock import FakeClock
from router_core.sim import (
    SimProfile,
    SimWorld,
    sim_http_client,
)
from router_core.sim.profiles import synth_text
from router_core.tokens import estimate_tokens
from tests.sim.helpers import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    PROMPT,
    USER,
    USER_ANTHROPIC,
    AnthropicFactory,
    OpenAIFactory,
    chat,
    message,
    world_with,
)

# --- success paths -------------------------------------------------------------------------------


async def test_openai_success_parses_with_usage_and_sim_markers(oai: OpenAIFactory) -> None:
    world = world_with(output_tokens=20, seed=1)
    raw = await oai(world).chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=USER)
    result = raw.parse()

    # The SDK builds models leniently; validating strictly proves the wire shape is complete.
    ChatCompletion.model_validate(json.loads(raw.http_response.content))
    assert raw.headers["x-routeq-simulated"] == "1"
    assert result.id.startswith("sim-")
    assert result.model == OPENAI_MODEL
    assert result.system_fingerprint == "routeq-sim"
    text = result.choices[0].message.content
    assert text is not None
    assert text.startswith("[simulated dep-a] summarise the quarterly")
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    prompt_tokens = estimate_tokens(PROMPT) + 4
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt_tokens, 20)
    assert result.usage.total_tokens == prompt_tokens + 20
    assert estimate_tokens(text) == 20


async def test_anthropic_success_parses_with_usage_and_system_prompt(claude: AnthropicFactory) -> None:
    world = world_with(output_tokens=12)
    system = "You are terse."
    raw = await claude(world).messages.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        max_tokens=100,
        system=system,
        messages=USER_ANTHROPIC,
    )
    result = await raw.parse()

    Message.model_validate(json.loads(raw.http_response.content))
    assert raw.headers["x-routeq-simulated"] == "1"
    assert result.id.startswith("sim-")
    assert result.model == ANTHROPIC_MODEL
    assert result.stop_reason == "end_turn"
    block = result.content[0]
    assert block.type == "text"
    assert block.text.startswith("[simulated dep-b] ")
    assert estimate_tokens(block.text) == 12
    expected_prompt = estimate_tokens(PROMPT) + 4 + estimate_tokens(system)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (expected_prompt, 12)


async def test_max_tokens_caps_completion_and_sets_length_reason(
    oai: OpenAIFactory, claude: AnthropicFactory
) -> None:
    world = world_with(output_tokens=64)

    capped = await chat(oai(world), max_completion_tokens=5)
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None
    assert capped.usage.completion_tokens == 5
    assert estimate_tokens(capped.choices[0].message.content or "") == 5

    legacy = await chat(oai(world), max_tokens=64)  # cap equal to the natural length: not cut
    assert legacy.choices[0].finish_reason == "stop"

    cut = await message(claude(world), max_tokens=3)
    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 3


@pytest.mark.parametrize("tokens", [1, 2, 3, 5, 8, 17, 64, 300])
def test_synth_text_has_exact_token_count(tokens: int) -> None:
    for words in ((), ("a",), ("supercalifragilistic", "x")):
        text = synth_text("a-rather-long-deployment-name", words, tokens)
        assert estimate_tokens(text) == tokens
    if tokens >= 10:
        assert synth_text("d", (), tokens).startswith("[simulated d] ")


async def test_openai_streaming_yields_chunks_then_usage(oai: OpenAIFactory) -> None:
    world = world_with(output_tokens=30)
    stream = await oai(world).chat.completions.create(
        model=OPENAI_MODEL,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3
    assert all(c.object == "chat.completion.chunk" and c.id.startswith("sim-") for c in chunks)
    assert text.startswith("[simulated dep-a] ")
    assert estimate_tokens(text) == 30
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 30


async def test_anthropic_streaming_final_message(claude: AnthropicFactory) -> None:
    world = world_with(output_tokens=10)
    async with claude(world).messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=4,
        messages=USER_ANTHROPIC,
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 4
    assert final.content[0].type == "text"
    assert estimate_tokens(final.content[0].text) == 4


# --- faults --------------------------------------------------------------------------------------


async def test_scripted_rate_limit_then_ok(oai: OpenAIFactory) -> None:
    world = world_with(script=["rate_limit", "ok"], retry_after_s=2)
    client = oai(world)

    with pytest.raises(openai.RateLimitError) as exc_info:
        await chat(client)
    assert exc_info.value.response.headers["retry-after"] == "2"
    assert exc_info.value.response.headers["x-routeq-simulated"] == "1"
    assert exc_info.value.code == "rate_limit_exceeded"
    assert exc_info.value.type == "rate_limit_exceeded"

    assert (await chat(client)).choices[0].finish_reason == "stop"
    stats = world.stats["dep-a"]
    assert (stats.requests, stats.admitted) == (2, 1)  # the 429 is not admitted
    assert stats.by_outcome == {"rate_limit": 1, "ok": 1}


async def test_rate_limit_without_retry_after(claude: AnthropicFactory) -> None:
    world = world_with(script=["rate_limit"], retry_after_s=None)
    with pytest.raises(anthropic.RateLimitError) as exc_info:
        await message(claude(world))
    assert "retry-after" not in exc_info.value.response.headers
    assert exc_info.value.type == "rate_limit_error"


async def test_server_error_maps_to_internal_server_error(
    oai: OpenAIFactory, claude: AnthropicFactory
) -> None:
    world = world_with(script=["server_error"])

    with pytest.raises(openai.InternalServerError) as openai_exc:
        await chat(oai(world))
    assert openai_exc.value.status_code == 500
    assert openai_exc.value.type == "server_error"

    with pytest.raises(anthropic.InternalServerError) as anthropic_exc:
        await message(claude(world))
    assert anthropic_exc.value.status_code == 500
    assert anthropic_exc.value.type == "api_error"


async def test_malformed_body_escapes_as_json_decode_error(
    oai: OpenAIFactory, claude: AnthropicFactory
) -> None:
    world = world_with(script=["malformed", "malformed"])
    # Neither SDK wraps this: with a JSON content type they call `response.json()` outside their
    # error mapping, so a bare `json.JSONDecodeError` (a ValueError, not an APIError) escapes.
    # Callers must catch ValueError themselves to treat it as a provider fault.
    with pytest.raises(json.JSONDecodeError):
        await chat(oai(world))
    with pytest.raises(json.JSONDecodeError):
        await message(claude(world))
    assert world.stats["dep-a"].by_outcome == {"malformed": 1}


async def test_malformed_stream_fails_while_iterating(oai: OpenAIFactory) -> None:
    world = world_with(script=["malformed"])
    stream = await oai(world).chat.completions.create(model=OPENAI_MODEL, messages=USER, stream=True)
    with pytest.raises(json.JSONDecodeError):
        async for _ in stream:
            pass


async def test_drop_maps_to_connection_error(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with(script=["drop", "ok"])
    client = oai(world)

    with pytest.raises(openai.APIConnectionError) as exc_info:
        await chat(client)
    assert type(exc_info.value) is openai.APIConnectionError  # not the timeout subclass
    assert isinstance(exc_info.value.__cause__, httpx2.RemoteProtocolError)
    assert (await chat(client)).usage is not None

    with pytest.raises(anthropic.APIConnectionError):
        await message(claude(world))


async def test_drop_in_abort_mode_still_looks_like_a_socket_drop(oai: OpenAIFactory) -> None:
    world = SimWorld({"dep-a": SimProfile(script=["drop"])}, drop_mode="abort")
    with pytest.raises(openai.APIConnectionError):
        await chat(oai(world))


async def test_context_length_scripted_and_automatic(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with(script=["context_length"], context_window=50)

    with pytest.raises(openai.BadRequestError) as scripted:
        await chat(oai(world))
    assert scripted.value.code == "context_length_exceeded"
    assert scripted.value.type == "invalid_request_error"
    assert "maximum context length is 50 tokens. However, your messages resulted in 51 tokens." in str(
        scripted.value
    )

    long_text = "x" * 400  # 100 + 4 tokens > 50
    long_prompt: list[ChatCompletionMessageParam] = [{"role": "user", "content": long_text}]
    long_anthropic: list[MessageParam] = [{"role": "user", "content": long_text}]
    with pytest.raises(openai.BadRequestError) as automatic:
        await oai(world).chat.completions.create(model=OPENAI_MODEL, messages=long_prompt)
    assert automatic.value.code == "context_length_exceeded"
    assert "resulted in 104 tokens" in automatic.value.message

    with pytest.raises(anthropic.BadRequestError) as anthropic_exc:
        await claude(world).messages.create(model=ANTHROPIC_MODEL, max_tokens=10, messages=long_anthropic)
    assert anthropic_exc.value.type == "invalid_request_error"
    assert anthropic_exc.value.api_message == "prompt is too long: 104 tokens > 50 maximum"
    # An automatic rejection happens before the script is consulted, so dep-b's script is intact.
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long: 51 tokens > 50"):
        await message(claude(world))


async def test_timeout_hangs_on_the_world_clock_then_answers(oai: OpenAIFactory, clock: FakeClock) -> None:
    world = world_with(clock, script=["timeout"], hang_s=30.0)
    start = clock.now()

    result = await chat(oai(world))

    assert result.choices[0].message.content
    assert clock.sleeps == [30.0]
    assert clock.now() == start + 30.0
    assert world.stats["dep-a"].by_outcome == {"timeout": 1}


class _StuckClock(FakeClock):
    """A clock whose sleeps never end, so only a client disconnect can end a hang."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()


async def test_hang_ends_when_the_client_disconnects() -> None:
    world = SimWorld({"dep-a": SimProfile(script=["timeout"])}, clock=_StuckClock())
    body = json.dumps({"model": OPENAI_MODEL, "messages": USER}).encode()
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": body, "more_body": False},
        {"type": "http.disconnect"},
    ]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(msg: Any) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/dep-a/v1/chat/completions"}
    await asyncio.wait_for(world(scope, receive, send), timeout=1)
    assert sent == []  # nobody left to answer
    assert world.stats["dep-a"].by_outcome == {"timeout": 1}


async def test_latency_with_jitter_is_bounded_and_seeded(clock: FakeClock) -> None:
    async def sleeps_for(seed: int) -> list[float]:
        fake = FakeClock()
        world = world_with(fake, latency_ms=100.0, latency_jitter_ms=50.0, seed=seed)
        async with sim_http_client(world) as http:
            for _ in range(20):
                body = {"model": OPENAI_MODEL, "messages": USER}
                assert (await http.post("/dep-a/v1/chat/completions", json=body)).status_code == 200
        return fake.sleeps

    first = await sleeps_for(3)
    assert len(first) == 20
    assert all(0.05 <= s <= 0.15 for s in first)
    assert len(set(first)) > 1
    assert await sleeps_for(3) == first


async def test_random_faults_are_reproducible_with_a_seed() -> None:
    async def statuses(seed: int) -> list[int]:
        world = world_with(error_rate=0.3, rate_limit_rate=0.2, seed=seed)
        body = {"model": OPENAI_MODEL, "messages": USER}
        async with sim_http_client(world) as http:
            return [
                (await http.post("/dep-a/v1/chat/completions", json=body)).status_code for _ in range(200)
            ]

    first = await statuses(42)
    assert first == await statuses(42)
    assert first != await statuses(43)
    assert 30 <= first.count(500) <= 90
    assert 15 <= first.count(429) <= 65
    assert first.count(200) + first.count(500) + first.count(429) == 200
