"""`POST /v1/messages` with `stream: true`, the anthropic SDK as the client: the worker's pieces are
relayed live as Messages API events (the first delta arrives while the provider is still answering)
and the stream ends with the stop reason and usage SQL recorded for the job. A stream (Messages or
Chat Completions) under way when the server stops ends with an error event naming its job."""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import httpx2
import pytest

from storage.jobs import ANY_TENANT, JobStatus
from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend
from tests.conftest import TRIO, deployment, make_catalog
from tests.test_api_messages import WEATHER

PACED = make_catalog(
    [
        *({**d, "sim": {"stream_interval_ms": 1}} if d["id"] == "fast-b" else d for d in TRIO),
        deployment("broken-d", sim={"error_rate": 1.0}),
    ]
)


class GatedClock:
    """The sim's clock: the first `free` pauses between stream frames pass, later ones wait for the
    gate, so the provider is provably still answering until the test opens it."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.gate = asyncio.Event()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        if self.free > 0:
            self.free -= 1
            return
        await self.gate.wait()


def _gate(api: LiveApi) -> GatedClock:
    assert api.sim_world is not None
    clock = GatedClock(free=3)
    api.sim_world.clock = clock
    return clock


async def test_messages_stream_token_by_token_while_the_job_runs(backend: Backend) -> None:
    async with serve_api(backend, catalog=PACED, loopback_sim=True, max_attempts_per_deployment=1) as api:
        gate = _gate(api)
        client = anthropic.AsyncAnthropic(base_url=api.url, api_key=await api.key("acme"), max_retries=0)
        try:
            async with client:
                async with client.messages.stream(
                    model="fast-b", max_tokens=500, messages=[{"role": "user", "content": "Say hello slowly"}]
                ) as stream:
                    job_id = stream.response.headers["x-routeq-job-id"]
                    texts: list[str] = []
                    async for text in stream.text_stream:
                        if not texts:  # the first delta: the provider has not finished, nor has the job
                            running = await backend.store.jobs.get(job_id, tenant=ANY_TENANT)
                            assert running.status == JobStatus.RUNNING
                            gate.gate.set()
                        texts.append(text)
                    final = await stream.get_final_message()
                await _events_in_order(client)
                await _tool_call_streamed(client, api)
                await _failure_before_the_first_piece(client)
        finally:
            gate.gate.set()  # a failed assertion must not leave the provider waiting
        job = await backend.store.jobs.get(job_id, tenant=ANY_TENANT)
        assert job.status == JobStatus.SUCCEEDED
        assert job.result is not None
        assert len(texts) > 1, "the text came in pieces"
        assert "".join(texts) == job.result["content"]
        [block] = final.content
        assert isinstance(block, anthropic.types.TextBlock)
        assert block.text == job.result["content"]
        assert final.stop_reason == "end_turn"
        assert final.id == f"msg_{job_id}"
        assert final.usage.input_tokens == job.result["usage"]["input_tokens"] > 0
        assert final.usage.output_tokens == job.result["usage"]["output_tokens"] > 0


async def _events_in_order(client: anthropic.AsyncAnthropic) -> None:
    """messages.create(stream=True): the raw events in the Messages API's order."""
    stream = await client.messages.create(
        model="fast-b", max_tokens=500, stream=True, messages=[{"role": "user", "content": "Say hello"}]
    )
    kinds = [event.type async for event in stream]
    deltas = kinds.count("content_block_delta")
    assert deltas >= 1  # pieces arriving together are relayed as one
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK drops the ping after content_block_start


async def _tool_call_streamed(client: anthropic.AsyncAnthropic, api: LiveApi) -> None:
    """A tool call's pieces arrive as a tool_use block's input_json_deltas; the SDK's accumulated
    input is the arguments the job recorded."""
    async with client.messages.stream(
        model="fast-b",
        max_tokens=500,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    ) as stream:
        job_id = stream.response.headers["x-routeq-job-id"]
        kinds = [(event.type, getattr(getattr(event, "delta", None), "type", None)) async for event in stream]
        final = await stream.get_final_message()
    assert ("content_block_delta", "input_json_delta") in kinds
    assert final.stop_reason == "tool_use"
    [call] = [block for block in final.content if isinstance(block, anthropic.types.ToolUseBlock)]
    job = await api.backend.store.jobs.get(job_id, tenant=ANY_TENANT)
    assert job.result is not None
    [recorded] = job.result["choices"][0]["message"]["tool_calls"]
    assert (call.id, call.name) == (recorded["id"], "get_weather")
    assert call.input == json.loads(recorded["function"]["arguments"])


async def _failure_before_the_first_piece(client: anthropic.AsyncAnthropic) -> None:
    """A stream whose provider fails before any piece is a plain HTTP error naming the job."""
    with pytest.raises(anthropic.InternalServerError) as caught:
        async with client.messages.stream(
            model="broken-d",
            max_tokens=50,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"preferences": {"allow_fallbacks": False}},
        ) as stream:
            await stream.get_final_message()
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-routeq-job-id"].startswith("job_")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_stream_under_way_ends_with_an_error_naming_its_job_when_the_server_stops(
    backend: Backend, path: str
) -> None:
    """The server starts to stop (SIGTERM: `ApiServer.shutdown`) while the provider is still
    answering: the stream's last event is an error naming the job, which goes on, not a connection
    cut mid-answer once the grace period is over."""
    async with serve_api(backend, catalog=PACED, loopback_sim=True, max_attempts_per_deployment=1) as api:
        gate = _gate(api)
        assert api.app is not None
        body = {
            "model": "fast-b",
            "max_tokens": 500,
            "stream": True,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        headers = {"Authorization": f"Bearer {await api.key('acme')}"}
        try:
            async with (
                httpx2.AsyncClient(base_url=api.url, headers=headers, timeout=30) as http,
                http.stream("POST", path, json=body) as response,
            ):
                assert response.status_code == 200
                job_id = response.headers["x-routeq-job-id"]
                lines = response.aiter_lines()
                async for line in lines:  # up to the first piece of text: the provider is mid-answer
                    if '"text_delta"' in line or ('"content":"' in line and '"content":""' not in line):
                        break
                api.app.state.stopping.begin(grace_s=0)
                rest = [line async for line in lines if line.startswith("data: ")]
        finally:
            gate.gate.set()  # a failed assertion must not leave the provider waiting
    error = json.loads(rest[-1].removeprefix("data: "))["error"]
    assert f"job {job_id} goes on: GET /v1/jobs/{job_id}" in error["message"]
    if path == "/v1/messages":
        assert error["type"] == "api_error"  # Anthropic's type for a 503
    else:
        assert (error["code"], error["type"]) == ("server_stopping", "stream_error")
