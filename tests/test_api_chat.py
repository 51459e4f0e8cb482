"""POST /v1/chat/completions with the official openai SDK as the client, plain and streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from storage.fleet.budgets import Budgets, user_scope
from storage.jobs import ANY_TENANT
from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend
from tests.conftest import TRIO, make_catalog

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the lighthouse keeper"}]


@pytest.fixture
async def api(backend: Backend) -> AsyncIterator[LiveApi]:
    async with serve_api(backend) as live:
        yield live


async def test_chat_completion_through_the_sdk(api: LiveApi) -> None:
    client = api.openai(await api.key("acme"))
    raw = await client.chat.completions.with_raw_response.create(
        model="router:cost",
        messages=PROMPT,
        max_tokens=500,
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-routeq-deployment"] == "cheap-a"  # router:cost picks the cheapest
    assert int(raw.headers["x-routeq-attempts"]) == 1
    assert float(raw.headers["x-routeq-cost-usd"]) > 0
    routing = (completion.model_extra or {})["routeq"]
    assert routing["deployment"] == "cheap-a"
    assert routing["cost_usd"] == pytest.approx(float(raw.headers["x-routeq-cost-usd"]))
    job_id = raw.headers["x-routeq-job-id"]
    assert routing["job_id"] == job_id
    job = await api.backend.store.jobs.get(job_id, tenant=ANY_TENANT)
    assert job.tenant == "acme"
    assert job.status.value == "succeeded"


async def test_model_may_be_a_deployment_and_preferences_ride_in_extra_body(api: LiveApi) -> None:
    client = api.openai(await api.key("acme"))
    raw = await client.chat.completions.with_raw_response.create(
        model="smart-c",
        messages=PROMPT,
    )
    assert raw.headers["x-routeq-deployment"] == "smart-c"
    raw = await client.chat.completions.with_raw_response.create(
        model="auto",
        messages=PROMPT,
        extra_body={"preferences": {"strategy": "quality"}},
    )
    assert raw.headers["x-routeq-deployment"] == "smart-c"


def paced_trio() -> list[dict[str, Any]]:
    """The trio, with fast-b streaming a frame every 2 ms, as a provider generating tokens would."""
    return [{**d, "sim": {"stream_interval_ms": 2}} if d["id"] == "fast-b" else d for d in TRIO]


async def test_streamed_completion_through_the_sdk(backend: Backend) -> None:
    async with serve_api(backend, catalog=make_catalog(paced_trio()), loopback_sim=True) as api:
        await streamed_completion(api)


async def streamed_completion(api: LiveApi) -> None:
    client = api.openai(await api.key("acme"))
    stream = await client.chat.completions.create(
        model="router:speed",
        messages=PROMPT,
        max_tokens=500,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish: list[str] = []
    usage = None
    routing = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
                routing = (chunk.model_extra or {}).get("routeq")
    assert len(pieces) > 3, "the text came in pieces"
    assert finish == ["stop"]
    assert usage is not None
    assert usage.completion_tokens > 0
    assert routing is not None
    assert routing["deployment"] == "fast-b"
    job = await api.backend.store.jobs.get(routing["job_id"], tenant=ANY_TENANT)
    assert "".join(pieces) == job.result["content"]  # type: ignore[index]


async def test_bad_bodies_name_the_field(api: LiveApi) -> None:
    client = api.openai(await api.key("acme"))
    wizard: Any = [{"role": "wizard", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="auto", messages=wizard)
    assert "messages.0.role" in str(caught.value)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="gpt-nope", messages=PROMPT)
    assert "gpt-nope" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as strategy:
        await client.chat.completions.create(model="router:cheapest", messages=PROMPT)
    assert "unknown strategy" in str(strategy.value)


async def test_keys_are_required(api: LiveApi) -> None:
    with pytest.raises(openai.AuthenticationError):
        await api.openai("rq-not-a-key").chat.completions.create(model="auto", messages=PROMPT)


async def test_models_lists_what_model_accepts(api: LiveApi) -> None:
    client = api.openai(await api.key("acme"))
    ids = [m.id for m in (await client.models.list()).data]
    assert ids[:2] == ["auto", "router:cost"]
    assert {"cheap-a", "fast-b", "smart-c", "cheap-a-model"} <= set(ids)
    assert (await client.models.retrieve("router:quality")).owned_by == "routeq"
    assert (await client.models.retrieve("fast-b")).owned_by == "fast"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-nope")


async def test_a_budget_refusal_is_402_naming_the_cap(api: LiveApi) -> None:
    budgets = Budgets(await api.backend.redis(), default_user_cap_usd=1.0)
    await budgets.set_cap(user_scope("acme", "broke"), 0.0)
    client = api.openai(await api.key("acme", "broke"))
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="auto", messages=PROMPT, stream=stream)
        assert refused.value.status_code == 402
        assert "user acme/broke" in str(refused.value)
        assert "cap $0.0000" in str(refused.value)
    # Another user of the same tenant still has the default cap.
    other = api.openai(await api.key("acme", "rich"))
    assert (await other.chat.completions.create(model="auto", messages=PROMPT)).choices
