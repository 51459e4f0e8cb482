"""Chat answers say where their time went: the `Server-Timing` header (producer/api/timing.py)."""

from __future__ import annotations

import anthropic

from producer.api.timing import SERVER_TIMING, Stages
from tests.api_harness import serve_api
from tests.backends import Backend

ANSWERED = ["auth", "admit", "store", "enqueue", "job", "read", "route"]
STREAMED = ["auth", "admit", "store", "enqueue", "first"]


def steps(header: str) -> dict[str, float]:
    """The header's steps in order, each with its duration (ms); a malformed entry fails here."""
    found: dict[str, float] = {}
    for entry in header.split(", "):
        name, _, duration = entry.partition(";dur=")
        found[name] = float(duration)
    return found


def test_each_step_is_timed_from_the_end_of_the_last() -> None:
    now = [10.0]
    stages = Stages(clock=lambda: now[0])
    now[0] = 10.002
    stages.lap("auth")
    now[0] = 10.0125
    stages.lap("store")
    reading = stages.now()
    now[0] = 10.0155
    stages.lap("job", at=reading)  # ended when a read began, timed as the next step
    stages.lap("read")
    stages.add("route", 0.0004)
    expected = "auth;dur=2.00, store;dur=10.50, job;dur=0.00, read;dur=3.00, route;dur=0.40"
    assert stages.header() == {SERVER_TIMING: expected}


async def test_a_chat_completion_says_where_its_time_went(backend: Backend) -> None:
    async with serve_api(backend) as api:
        client = api.openai(await api.key("acme"))
        messages = [{"role": "user", "content": "Where did the time go?"}]
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=messages)  # type: ignore[arg-type]
        timed = steps(raw.headers[SERVER_TIMING])
        assert list(timed) == ANSWERED
        assert all(ms >= 0 for ms in timed.values())
        assert timed["route"] <= timed["job"]  # the worker's walk happens while the API waits on the job

        async with client.chat.completions.with_streaming_response.create(
            model="auto",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
        ) as streamed:
            assert list(steps(streamed.headers[SERVER_TIMING])) == STREAMED
            await streamed.read()


async def test_a_message_says_where_its_time_went(backend: Backend) -> None:
    async with serve_api(backend) as api:
        client = anthropic.AsyncAnthropic(base_url=api.url, api_key=await api.key("acme"), max_retries=0)
        async with client:
            question = {"role": "user", "content": "Where did the time go?"}
            raw = await client.messages.with_raw_response.create(
                model="auto",
                max_tokens=200,
                messages=[question],  # type: ignore[list-item]
            )
            assert list(steps(raw.headers[SERVER_TIMING])) == ANSWERED
            async with client.messages.with_streaming_response.create(
                model="auto",
                max_tokens=200,
                messages=[question],  # type: ignore[list-item]
                stream=True,
            ) as streamed:
                assert list(steps(streamed.headers[SERVER_TIMING])) == STREAMED
                await streamed.read()
