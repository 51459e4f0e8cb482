"""The simulated provider world through the real SDKs: rate windows, routing, validation, a real server."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import anthropic
import httpx2
import openai
import pytest
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
from tests.sim.helpers import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    USER,
    AnthropicFactory,
    OpenAIFactory,
    chat,
    message,
    world_with,
)

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
