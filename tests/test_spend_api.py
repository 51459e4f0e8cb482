"""`GET /v1/spend?group_by=user|key|batch`, `/v1/analytics?period=` and `routeq spend`: spend from the
SQL ledger, over real HTTP on both backends.

Every call here costs exactly $0.01 (free input, 10 output tokens at $1,000 per million), so the
sums are exact. Jobs are submitted through the API with two keys of one tenant (POST /v1/jobs and a
chat completion) and one key of another, and by the Python client with no key (as the CLI does).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from producer.cli import app as cli
from producer.client import Client
from router_core.models import ChatRequest, Message
from router_core.providers import sim_world_for
from storage.bus.queue import enqueue_jobs
from storage.jobs import JobStatus, NewJob
from storage.sql.schema import jobs
from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend, open_backend
from tests.conftest import deployment, make_catalog

PRICEY = make_catalog(
    [deployment("pricey-a", latency_ms=1, price={"input_per_mtok": 0.0, "output_per_mtok": 1000.0})]
)
runner = CliRunner()


@pytest.fixture(params=["embedded", "services"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveApi]:
    async with (
        open_backend(request.param, tmp_path, on_file=True) as backend,
        serve_api(backend, catalog=PRICEY, worker=False) as live,
    ):
        yield live


def http(api: LiveApi, secret: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


async def run_worker(backend: Backend) -> None:
    await backend.run_worker(catalog=PRICEY, sim_world=sim_world_for(PRICEY))


async def spend(client: httpx2.AsyncClient, **params: Any) -> dict[str, Any]:
    reply = await client.get("/v1/spend", params=params)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def rows(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r["group"], round(r["cost_usd"], 6), r["requests"]) for r in body["data"]]


async def test_spend_per_user_key_and_batch_from_the_ledger(api: LiveApi) -> None:
    backend = api.backend
    store = backend.store
    ann_key, ann_secret = await store.api_keys.create(tenant="acme", user_id="ann")
    bob_key, bob_secret = await store.api_keys.create(tenant="acme", user_id="bob")
    ann, bob = http(api, ann_secret), http(api, bob_secret)
    gil = http(api, await api.key("globex", "gil"))
    operator = http(api, await api.key("ops", "root", operator=True))
    ann_id = ann_key.id

    async def job(client: httpx2.AsyncClient, prompt: str) -> str:
        reply = await client.post("/v1/jobs", json={"prompt": prompt, "max_tokens": 10})
        assert reply.status_code in (200, 201, 202), reply.text
        job_id: str = reply.json()["id"]
        return job_id

    submitted = [
        await job(ann, "one"),
        await job(ann, "two"),
        await job(bob, "three"),
        await job(gil, "four"),
    ]
    # A chat completion waits for its answer: start it, let the burst worker run once it is queued.
    chat = asyncio.create_task(
        ann.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
        )
    )
    redis = await backend.redis()
    while await redis.zcard(backend.settings.queue_name) < 5:  # until the chat's job is queued
        assert not chat.done(), chat.result().text
        await asyncio.sleep(0.01)
    no_key = Client(await backend.redis(), store, backend.settings, tenant="acme", user="cli")
    asked = [
        NewJob(f"c{i}", ChatRequest(messages=[Message(role="user", content=f"cli {i}")], max_tokens=10))
        for i in range(2)
    ]
    cli_batch = await no_key.submit_batch(asked)
    await run_worker(backend)
    assert (await chat).status_code == 200

    # The keys were recorded on the jobs they submitted; the client's jobs have none.
    async with store.reading() as conn:
        recorded = dict((await conn.execute(select(jobs.c.id, jobs.c.api_key_id))).all())
    assert recorded[submitted[0]] == recorded[submitted[1]] == ann_id
    assert recorded[submitted[2]] == bob_key.id
    assert [
        recorded[j] for j in await store.jobs.ids(cli_batch, tenant="acme", statuses=list(JobStatus))
    ] == [None, None]

    by_key = await spend(ann, group_by="key")
    assert rows(by_key) == [(ann_id, 0.03, 3), (None, 0.02, 2), (bob_key.id, 0.01, 1)]
    assert (by_key["tenant"], by_key["has_more"], by_key["next_offset"]) == ("acme", False, None)
    assert rows(await spend(ann, group_by="user")) == [("ann", 0.03, 3), ("cli", 0.02, 2), ("bob", 0.01, 1)]
    # Tokens are the charged calls' input and output tokens, as the jobs report their usage.
    views = [(await ann.get(f"/v1/jobs/{j}")).json() for j in submitted[:2]]
    ann_tokens = sum(
        v["result"]["usage"]["input_tokens"] + v["result"]["usage"]["output_tokens"] for v in views
    )
    chat_usage = (await chat).json()["usage"]["total_tokens"]
    assert by_key["data"][0]["tokens"] == ann_tokens + chat_usage

    first = await spend(ann, group_by="batch", limit=2)
    assert first["data"][0]["group"] == cli_batch
    assert (first["has_more"], first["next_offset"]) == (True, 2)
    rest = await spend(ann, group_by="batch", limit=2, offset=2)
    last = await spend(ann, group_by="batch", limit=2, offset=4)
    batches = rows(first) + rows(rest) + rows(last)
    assert len({b[0] for b in batches}) == 5
    assert last["has_more"] is False
    assert round(sum(b[1] for b in batches), 6) == 0.06

    # Redelivered jobs (arq delivers at least once) add no charge: the ledger counts each call once.
    await enqueue_jobs(await backend.redis(), list(recorded), queue_name=backend.settings.queue_name)
    await run_worker(backend)
    assert rows(await spend(ann, group_by="key")) == rows(by_key)

    # Tenants see their own; operators may name another tenant or ask for all of them.
    assert rows(await spend(gil, group_by="user", period="today")) == [("gil", 0.01, 1)]
    refused = await gil.get("/v1/spend", params={"group_by": "user", "tenant": "acme"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "not_operator")
    assert rows(await spend(operator, group_by="user", tenant="acme"))[0] == ("ann", 0.03, 3)
    every = await spend(operator, group_by="user", all_tenants="true", period="week")
    assert {(r["tenant"], r["group"]) for r in every["data"]} == {
        ("acme", "ann"),
        ("acme", "cli"),
        ("acme", "bob"),
        ("globex", "gil"),
    }
    bad = await ann.get("/v1/spend", params={"group_by": "model"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "query parameter group_by"
    both = await ann.get("/v1/spend", params={"group_by": "user", "period": "today", "since": "2026-01-01"})
    assert both.status_code == 400
    assert "`period` or `since`" in both.json()["error"]["message"]

    # Analytics: spend per day, week and month of the same ledger.
    for period in ("day", "week", "month"):
        report = (await ann.get("/v1/analytics", params={"period": period})).json()
        (bucket,) = report["spend"]["rows"]
        assert (round(bucket["cost_usd"], 6), bucket["calls"], report["spend"]["timezone"]) == (
            0.06,
            6,
            "UTC",
        )
    assert "spend" not in (await ann.get("/v1/analytics")).json()
    long = await ann.get("/v1/analytics", params={"period": "day", "since": "2000-01-01T00:00:00Z"})
    assert long.status_code == 400
    assert "more than 1000 daily periods" in long.json()["error"]["message"]
    for client in (ann, bob, gil, operator):
        await client.aclose()

    # `routeq spend` reads the same ledger (in a thread: the command runs its own event loop).
    env = {"ROUTEQ_DATABASE_URL": backend.settings.database_url, "ROUTEQ_TENANT": "acme"}
    shown = await asyncio.to_thread(runner.invoke, cli, ["spend", "--group-by", "key", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert rows(json.loads(shown.output)) == rows(by_key)
    table = await asyncio.to_thread(
        runner.invoke, cli, ["spend", "--group-by", "user", "--all-tenants", "--period", "today"], env=env
    )
    assert "gil" in table.output, table.output
    assert "$0.0300" in table.output
