"""POST /v1/chat/completions with the official openai SDK as the client, plain and streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
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


# -- the whole Chat Completions language ------------------------------------------------------------

# The trio without native `n` (the router fans out: one call per answer) and without vision or
# response_format, so a request needing those is refused before a job is made.
NO_N = make_catalog([{**d, "features": ["tools", "stop", "seed", "temperature"]} for d in TRIO])
WEATHER: Any = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


async def test_n_choices_user_and_metadata_through_the_sdk(backend: Backend) -> None:
    async with serve_api(backend, catalog=NO_N) as api:
        secret = await api.key("acme")
        client = api.openai(secret)
        raw = await client.chat.completions.with_raw_response.create(
            model="router:cost",
            messages=PROMPT,
            n=2,
            seed=7,
            stop=["\n\n"],
            tools=[WEATHER],
            tool_choice="none",  # text answers: with tools allowed the sim would call one
            user="end-7",
            metadata={"team": "search", "env": "prod"},
        )
        completion = raw.parse()
        assert [c.index for c in completion.choices] == [0, 1]
        assert all(c.message.content and c.finish_reason == "stop" for c in completion.choices)
        job_id = raw.headers["x-routeq-job-id"]
        assert int(raw.headers["x-routeq-attempts"]) == 1  # one fan-out attempt of two calls
        async with httpx2.AsyncClient(
            base_url=api.url, headers={"Authorization": f"Bearer {secret}"}
        ) as http:
            view = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert (view["user"], view["metadata"]) == ("end-7", {"team": "search", "env": "prod"})
        assert [c["message"]["content"] for c in view["result"]["choices"]] == [
            c.message.content for c in completion.choices
        ]
        job = await api.backend.store.jobs.get(job_id, tenant=ANY_TENANT)
        assert (job.end_user, job.metadata) == ("end-7", {"team": "search", "env": "prod"})


async def test_n_above_one_cannot_be_streamed(api: LiveApi) -> None:
    client = api.openai(await api.key("acme"))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="auto", messages=PROMPT, n=2, stream=True)
    assert caught.value.param == "n"
    assert "n > 1 cannot be streamed; ask without stream or with n=1" in str(caught.value)
    assert await api.backend.store.batches.list(tenant="acme") == []  # refused before a job was made


async def test_fields_no_deployment_honours_and_bad_nested_fields_are_400_naming_the_field(
    backend: Backend,
) -> None:
    async with serve_api(backend, catalog=NO_N, worker=False) as api:
        client = api.openai(await api.key("acme"))
        image: Any = [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
            }
        ]
        cases: list[tuple[dict[str, Any], str, str]] = [
            (
                {"response_format": {"type": "json_object"}},
                "response_format",
                "response_format: no deployment in the catalog honours it",
            ),
            (
                {"messages": image},
                "messages",
                "messages: no deployment in the catalog honours its image_url parts",
            ),
            (
                {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
                "tools.0.function.name",
                "tools.0.function.name: String should match pattern",
            ),
            (
                {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "a b"}}},
                "tool_choice.function.name",
                "tool_choice.function.name: String should match pattern",
            ),
            ({"top_logprobs": 2}, "top_logprobs", "top_logprobs: needs logprobs: true"),
            ({"n": 17}, "n", "n: Input should be less than or equal to 16"),
        ]
        for fields, param, message in cases:
            body: Any = {"model": "auto", "messages": PROMPT, **fields}
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(**body)
            assert caught.value.param == param, fields
            error = caught.value.body
            assert isinstance(error, dict)
            assert str(error["message"]).startswith(message), error
        assert await api.backend.store.batches.list(tenant="acme") == []


async def test_a_job_takes_the_same_fields(api: LiveApi) -> None:
    secret = await api.key("acme")
    body = {"prompt": "Hi", "n": 2, "user": "end-7", "metadata": {"team": "a"}, "tools": [WEATHER], "seed": 3}
    async with httpx2.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}) as http:
        created = await http.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        view = created.json()
        assert (view["user"], view["metadata"]) == ("end-7", {"team": "a"})
        refused = await http.post("/v1/jobs", json={"prompt": "Hi", "tool_choice": "auto"})
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == "tool_choice: needs tools"


async def test_analytics_grouped_by_end_user(api: LiveApi) -> None:
    secret = await api.key("acme")
    client = api.openai(secret)
    for end_user in ("carol", "carol", "dave", None):
        extra: Any = {} if end_user is None else {"user": end_user}
        await client.chat.completions.create(model="router:cost", messages=PROMPT, **extra)  # one price
    async with httpx2.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}) as http:
        grouped = (await http.get("/v1/analytics", params={"group_by": "end_user"})).json()
        rows = {row["user"]: row for row in grouped["end_users"]}
        assert set(rows) == {"carol", "dave", None}
        assert (rows["carol"]["requests"], rows["dave"]["requests"], rows[None]["requests"]) == (2, 1, 1)
        assert all(row["tenant"] == "acme" and row["cost_usd"] > 0 for row in rows.values())
        assert sum(row["cost_usd"] for row in rows.values()) == pytest.approx(grouped["totals"]["cost_usd"])
        top = (await http.get("/v1/analytics", params={"group_by": "end_user", "limit": 1})).json()
        assert [row["user"] for row in top["end_users"]] == ["carol"]
        assert (await http.get("/v1/analytics")).json()["end_users"] is None
        refused = await http.get("/v1/analytics", params={"group_by": "model"})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "query parameter group_by"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"model": "auto", "messages": [', "application/json"),  # not JSON
        (b"", "application/json"),  # no body
        (b"[1, 2]", "application/json"),  # JSON, not an object
        (b'{"model": "auto", "messages": []}', "application/json; charset=utf-8"),  # a bad field
        (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}', "text/plain"),  # not JSON
        (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}', None),  # no type
    ],
)
async def test_chat_bodies_are_refused_as_every_route_refuses_them(
    api: LiveApi, content: bytes, content_type: str | None
) -> None:
    """The chat route reads its own body (not as a FastAPI parameter): what it refuses and how it says
    so is what `/v1/route`, which takes the same body as a parameter, answers."""
    headers = {"Authorization": f"Bearer {await api.key('acme')}"}
    if content_type is not None:
        headers["content-type"] = content_type
    async with httpx2.AsyncClient(base_url=api.url, headers=headers) as http:
        chat = await http.post("/v1/chat/completions", content=content)
        routed = await http.post("/v1/route", content=content)
    assert (chat.status_code, chat.json()) == (400, routed.json())
    assert set(chat.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_chat_body_that_is_not_utf8_is_400(api: LiveApi) -> None:
    headers = {"Authorization": f"Bearer {await api.key('acme')}", "content-type": "application/json"}
    async with httpx2.AsyncClient(base_url=api.url, headers=headers) as http:
        response = await http.post("/v1/chat/completions", content=b'{"model": "\xff"}')
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the body is not UTF-8 JSON"
