"""The simulated provider world, driven through the real openai / anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import Message, MessageParam
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from pydantic import ValidationError

from router_core.clock import FakeClock
from router_core.sim import (
    Fault,
    SimCounters,
    SimProfile,
    SimWorld,
    create_server,
    sim_http_client,
)
from router_core.sim.profiles import synth_text
from router_core.tokens import estimate_tokens

PROMPT = "Summarise the quarterly report please"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
USER_ANTHROPIC: list[MessageParam] = [{"role": "user", "content": PROMPT}]
OPENAI_MODEL = "gpt-sim"
# Not in anthropic's DEPRECATED_MODELS, which would warn (and warnings are errors here).
ANTHROPIC_MODEL = "claude-sim"

OpenAIFactory = Callable[..., openai.AsyncOpenAI]
AnthropicFactory = Callable[..., anthropic.AsyncAnthropic]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def http_clients() -> AsyncIterator[list[httpx2.AsyncClient]]:
    clients: list[httpx2.AsyncClient] = []
    yield clients
    for client in clients:
        await client.aclose()


@pytest.fixture
def oai(http_clients: list[httpx2.AsyncClient]) -> OpenAIFactory:
    def make(world: SimWorld, deployment: str = "dep-a") -> openai.AsyncOpenAI:
        http = sim_http_client(world)
        http_clients.append(http)
        base_url = f"http://sim.routeq.invalid/{deployment}/v1"
        return openai.AsyncOpenAI(api_key="sim", base_url=base_url, http_client=http, max_retries=0)

    return make


@pytest.fixture
def claude(http_clients: list[httpx2.AsyncClient]) -> AnthropicFactory:
    def make(world: SimWorld, deployment: str = "dep-b") -> anthropic.AsyncAnthropic:
        http = sim_http_client(world)
        http_clients.append(http)
        base_url = f"http://sim.routeq.invalid/{deployment}"
        return anthropic.AsyncAnthropic(api_key="sim", base_url=base_url, http_client=http, max_retries=0)

    return make


def world_with(clock: FakeClock | None = None, **profile: Any) -> SimWorld:
    """A world where dep-a (OpenAI-style) and dep-b (Anthropic-style) share one profile shape."""
    return SimWorld({"dep-a": SimProfile(**profile), "dep-b": SimProfile(**profile)}, clock=clock)


async def chat(client: openai.AsyncOpenAI, **kwargs: Any) -> ChatCompletion:
    result: ChatCompletion = await client.chat.completions.create(model=OPENAI_MODEL, messages=USER, **kwargs)
    return result


async def message(client: anthropic.AsyncAnthropic, max_tokens: int = 100) -> Message:
    return await client.messages.create(model=ANTHROPIC_MODEL, max_tokens=max_tokens, messages=USER_ANTHROPIC)


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


# --- rpm window ----------------------------------------------------------------------------------


async def test_rpm_window_refuses_then_readmits(oai: OpenAIFactory, clock: FakeClock) -> None:
    world = world_with(clock, rpm=2, window_s=1.0)
    client = oai(world)
    await chat(client)
    await chat(client)

    with pytest.raises(openai.RateLimitError) as exc_info:
        await chat(client)
    assert int(exc_info.value.response.headers["retry-after"]) >= 1

    clock.advance(1.0)
    assert (await chat(client)).usage is not None
    stats = world.stats["dep-a"]
    assert (stats.requests, stats.admitted) == (4, 3)
    assert stats.by_outcome == {"ok": 3, "rpm_limited": 1}


async def test_rpm_retry_after_counts_down_to_the_oldest_request(clock: FakeClock) -> None:
    world = world_with(clock, rpm=2, window_s=10.0)
    body = {"model": OPENAI_MODEL, "messages": USER}
    async with sim_http_client(world) as http:
        await http.post("/dep-a/v1/chat/completions", json=body)
        clock.advance(3.0)
        await http.post("/dep-a/v1/chat/completions", json=body)
        clock.advance(1.0)
        refused = await http.post("/dep-a/v1/chat/completions", json=body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "6"  # oldest leaves 10 s after it was admitted

        # Refusals are not counted: hammering while full never extends the wait.
        for _ in range(5):
            await http.post("/dep-a/v1/chat/completions", json=body)
        clock.advance(6.0)
        assert (await http.post("/dep-a/v1/chat/completions", json=body)).status_code == 200


async def test_rpm_window_never_exceeded_under_load(clock: FakeClock) -> None:
    world = world_with(clock, rpm=5, window_s=1.0)
    body = {"model": OPENAI_MODEL, "messages": USER}
    async with sim_http_client(world) as http:
        for _ in range(100):
            await http.post("/dep-a/v1/chat/completions", json=body)
            clock.advance(0.05)
    times = world.stats["dep-a"].admitted_at
    assert len(times) == world.stats["dep-a"].admitted == 25
    assert all(sum(1 for t in times if start <= t < start + 1.0) <= 5 for start in times)


def test_admitted_at_is_capped_at_100k_most_recent() -> None:
    stats = SimCounters()
    for i in range(100_001):
        stats.record_admission(float(i))
    assert stats.admitted == 100_001
    assert len(stats.admitted_at) <= 100_000
    assert stats.admitted_at[-1] == 100_000.0


# --- routing, validation, control ----------------------------------------------------------------


async def test_unknown_deployment_is_not_found(oai: OpenAIFactory, claude: AnthropicFactory) -> None:
    world = world_with()
    with pytest.raises(openai.NotFoundError) as openai_exc:
        await chat(oai(world, "nope"))
    assert openai_exc.value.code == "model_not_found"
    assert openai_exc.value.response.headers["x-routeq-simulated"] == "1"

    with pytest.raises(anthropic.NotFoundError) as anthropic_exc:
        await message(claude(world, "nope"))
    assert anthropic_exc.value.type == "not_found_error"
    assert "nope" not in world.stats


async def test_default_profile_serves_any_deployment(oai: OpenAIFactory) -> None:
    world = SimWorld(default_profile=SimProfile(output_tokens=7))
    result = await chat(oai(world, "anything"))
    assert result.usage is not None
    assert result.usage.completion_tokens == 7
    assert world.stats["anything"].admitted == 1


async def test_invalid_requests_get_provider_shaped_400s() -> None:
    world = world_with(script=["server_error"])
    async with sim_http_client(world) as http:
        bad_json = await http.post("/dep-a/v1/chat/completions", content=b"{not json")
        no_messages = await http.post("/dep-a/v1/chat/completions", json={"model": OPENAI_MODEL})
        no_max_tokens = await http.post(
            "/dep-b/v1/messages", json={"model": ANTHROPIC_MODEL, "messages": USER}
        )
        bad_route = await http.get("/dep-a/v1/chat/completions")
        # Validation failures do not consume the script.
        scripted = await http.post(
            "/dep-a/v1/chat/completions", json={"model": OPENAI_MODEL, "messages": USER}
        )

    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"
    assert no_max_tokens.status_code == 400
    assert no_max_tokens.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    assert bad_route.status_code == 404
    assert scripted.status_code == 500
    for response in (bad_json, no_messages, no_max_tokens, bad_route, scripted):
        assert response.headers["x-routeq-simulated"] == "1"
    assert world.stats["dep-a"].by_outcome == {"bad_request": 2, "server_error": 1}


async def test_control_endpoints() -> None:
    world = world_with()
    async with sim_http_client(world) as http:
        health = await http.get("/_sim/health")
        assert (health.status_code, health.json()) == (200, {"ok": True})

        put = await http.put("/_sim/profiles/dep-new", json={"script": ["server_error"], "output_tokens": 9})
        assert put.status_code == 200
        assert put.json()["profile"]["output_tokens"] == 9
        chat_body = {"model": OPENAI_MODEL, "messages": USER}
        assert (await http.post("/dep-new/v1/chat/completions", json=chat_body)).status_code == 500
        ok = await http.post("/dep-new/v1/chat/completions", json=chat_body)
        assert ok.json()["usage"]["completion_tokens"] == 9

        stats = (await http.get("/_sim/stats")).json()
        assert stats["now"] > 0
        assert stats["deployments"]["dep-new"]["by_outcome"] == {"server_error": 1, "ok": 1}
        assert stats["deployments"]["dep-new"]["requests"] == 2
        assert len(stats["deployments"]["dep-new"]["admitted_at"]) == 2
        assert stats["deployments"]["dep-a"]["requests"] == 0

        invalid = await http.put("/_sim/profiles/dep-new", json={"error_rate": 2})
        assert invalid.status_code == 422
        assert "error_rate" in invalid.json()["error"]
        extra = await http.put("/_sim/profiles/dep-new", json={"bogus": 1})
        assert extra.status_code == 422
        assert "Extra inputs are not permitted" in extra.json()["error"]
        assert (await http.get("/_sim/nothing")).status_code == 404


async def test_set_profile_restarts_the_script(oai: OpenAIFactory) -> None:
    world = world_with(script=["server_error"])
    client = oai(world)
    with pytest.raises(openai.InternalServerError):
        await chat(client)
    await chat(client)
    world.set_profile("dep-a", SimProfile(script=["server_error"]))
    with pytest.raises(openai.InternalServerError):
        await chat(client)
    assert world.profile("dep-a") == SimProfile(script=["server_error"])
    assert world.profile("missing") is None


async def test_set_profile_keeps_the_rpm_window(clock: FakeClock) -> None:
    world = world_with(clock, rpm=5, window_s=10.0)
    body = {"model": OPENAI_MODEL, "messages": USER}
    async with sim_http_client(world) as http:
        for _ in range(4):
            await http.post("/dep-a/v1/chat/completions", json=body)
            clock.advance(1.0)
        world.set_profile("dep-a", SimProfile(rpm=2, window_s=10.0))
        refused = await http.post("/dep-a/v1/chat/completions", json=body)
    # Admitted at t0..t0+3, now t0+4: three must leave before one fits; the third leaves at t0+12.
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "8"


async def test_lifespan_messages_are_acknowledged() -> None:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(msg: Any) -> None:
        sent.append(msg["type"])

    await SimWorld()({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"error_rate": 1.5},
        {"drop_rate": -0.1},
        {"error_rate": 0.6, "drop_rate": 0.5},
        {"rpm": 0},
        {"nope": 1},
    ],
)
def test_profile_validation(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SimProfile(**overrides)


def test_profile_defaults() -> None:
    profile = SimProfile()
    script: list[Fault] = []
    assert (profile.rpm, profile.window_s, profile.retry_after_s, profile.hang_s) == (None, 60.0, 1.0, 600.0)
    assert (profile.context_window, profile.output_tokens, profile.script) == (128_000, 64, script)


# --- real server ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_real_server_drops_the_socket_then_answers() -> None:
    world = SimWorld({"dep-a": SimProfile(script=["drop", "ok"])})
    port = _free_port()
    server = create_server(world, port=port)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(5):
            # uvicorn exposes readiness only as a flag, so there is no event to wait on.
            while not server.started:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        # trust_env=False: a proxy from the environment must never see loopback test traffic.
        async with httpx2.AsyncClient(trust_env=False) as http:
            client = openai.AsyncOpenAI(
                api_key="sim", base_url=f"http://127.0.0.1:{port}/dep-a/v1", http_client=http, max_retries=0
            )
            with pytest.raises(openai.APIConnectionError) as exc_info:
                await chat(client)
            assert isinstance(exc_info.value.__cause__, httpx2.RemoteProtocolError)

            result = await chat(client)
            assert (result.choices[0].message.content or "").startswith("[simulated dep-a] ")
            health = await http.get(f"http://127.0.0.1:{port}/_sim/health")
            assert health.headers["x-routeq-simulated"] == "1"
        assert world.stats["dep-a"].by_outcome == {"drop": 1, "ok": 1}
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=5)
