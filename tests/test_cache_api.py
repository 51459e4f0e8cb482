"""The response cache as users and operators see it through the HTTP API, on both backends.

Job views (chat answers and their `x-routeq-cache` header, `GET /v1/jobs/{id}`, Batch API output
lines) say whether an answer came from the cache and what it saved; `preferences.cache` passes
through every entry point, a bad value a 400 (or a rejected line) naming the field; the cache's own
routes (`/v1/cache/stats`, `/clear`, `/policy`) keep to the key's tenant and rights; analytics
count hits and dollars saved. The cache is on here (`ROUTEQ_CACHE` is off for the rest of the suite).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from storage.jobs import ANY_TENANT
from tests.api_harness import LiveApi, serve_api
from tests.backends import open_backend

WAIT_S = 15.0
PROMPT = [{"role": "user", "content": "Name a lighthouse"}]


@pytest.fixture(params=["embedded", "services"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveApi]:
    async with (
        open_backend(request.param, tmp_path, cache=True) as backend,
        serve_api(backend, api_wait_timeout_s=WAIT_S) as live,
    ):
        yield live


async def client(
    api: LiveApi, tenant: str, *, admin: bool = False, operator: bool = False
) -> httpx2.AsyncClient:
    secret = await api.key(tenant, admin=admin, operator=operator)
    return httpx2.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}, timeout=WAIT_S)


async def chat(http: httpx2.AsyncClient, **fields: Any) -> httpx2.Response:
    response = await http.post("/v1/chat/completions", json={"model": "auto", "messages": PROMPT, **fields})
    assert response.status_code == 200, response.text
    return response


def bad_request(response: httpx2.Response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return str(error["message"])


async def test_chat_answers_and_job_views_say_hit_or_miss_and_what_was_saved(api: LiveApi) -> None:
    async with await client(api, "acme") as acme:
        first = await chat(acme)
        second = await chat(acme)
        off = await chat(acme, preferences={"cache": "off"})
        refreshed = await chat(acme, preferences={"cache": {"mode": "refresh", "ttl_s": 60}})
        served = await chat(acme)

        assert first.headers["x-routeq-cache"] == "miss"
        paid = first.json()["routeq"]
        assert (paid["cache_hit"], paid["cache_source_job"], paid["cache_similarity"]) == (False, None, None)
        assert paid["saved_usd"] == 0
        assert paid["cost_usd"] > 0

        assert second.headers["x-routeq-cache"] == "hit"
        assert float(second.headers["x-routeq-cost-usd"]) == 0
        assert second.headers["x-routeq-attempts"] == "0"
        hit = second.json()
        assert set(hit) == {"id", "object", "created", "model", "choices", "usage", "routeq"}  # OpenAI-shaped
        assert hit["choices"] == first.json()["choices"]
        assert hit["routeq"]["cache_hit"] is True
        assert hit["routeq"]["cache_source_job"] == paid["job_id"]
        assert hit["routeq"]["cache_similarity"] is None  # exact
        assert hit["routeq"]["saved_usd"] == pytest.approx(paid["cost_usd"])
        assert hit["routeq"]["cost_usd"] == 0

        assert off.headers["x-routeq-cache"] == "off"
        assert off.json()["routeq"]["cache_hit"] is False
        assert refreshed.headers["x-routeq-cache"] == "miss"  # called whatever was cached
        assert served.json()["routeq"]["cache_source_job"] == refreshed.headers["x-routeq-job-id"]

        job = (await acme.get(f"/v1/jobs/{second.headers['x-routeq-job-id']}")).raise_for_status().json()
        assert job["attempts"] == []  # no provider call
        assert {
            name: job["routeq"][name] for name in ("cache_hit", "cache_source_job", "cache_similarity")
        } == {
            "cache_hit": True,
            "cache_source_job": paid["job_id"],
            "cache_similarity": None,
        }
        assert job["routeq"]["saved_usd"] == pytest.approx(paid["cost_usd"])


async def test_a_streamed_hit_ends_with_the_cache_fields(api: LiveApi) -> None:
    async with await client(api, "acme") as acme:
        paid = (await chat(acme)).json()["routeq"]
        body = {"model": "auto", "messages": PROMPT, "stream": True}
        async with acme.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            events = [line async for line in response.aiter_lines() if line.startswith("data: {")]
        final = json.loads(events[-1].removeprefix("data: "))
        assert final["routeq"]["cache_hit"] is True
        assert final["routeq"]["cache_source_job"] == paid["job_id"]


async def test_preferences_cache_passes_through_every_entry_point_and_bad_values_name_the_field(
    api: LiveApi,
) -> None:
    async with await client(api, "acme") as acme:
        refused = await acme.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": PROMPT, "preferences": {"cache": "sometimes"}},
        )
        assert "use" in bad_request(refused, "preferences.cache")
        refused = await acme.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": PROMPT, "preferences": {"cache": {"ttl_s": 0}}},
        )
        assert "greater than 0" in bad_request(refused, "preferences.cache.ttl_s")
        refused = await acme.post(
            "/v1/jobs", json={"prompt": "hi", "preferences": {"cache": {"threshold": 2}}}
        )
        assert "less than or equal to 1" in bad_request(refused, "preferences.cache.threshold")
        refused = await acme.post("/v1/jobs", json={"prompt": "hi", "preferences": {"cache": {"mode": "x"}}})
        bad_request(refused, "preferences.cache.mode")
        assert await api.backend.store.batches.list(tenant="acme") == []  # refused before a job was made

        # One at a time: queued together, either of the first two may be the one that pays.
        views = []
        for body in ({}, {}, {"preferences": {"cache": "off"}}):
            posted = await acme.post("/v1/jobs", json={"prompt": "Name a bay", **body})
            views.append(await finished_job(acme, posted.json()["id"]))
        assert [view["routeq"]["cache_hit"] for view in views] == [False, True, False]
        assert views[1]["routeq"]["cache_source_job"] == views[0]["id"]
        stored = await api.backend.store.jobs.get(views[2]["id"], tenant=ANY_TENANT)
        assert stored.cache_key is None  # off: neither read nor written


async def finished_job(http: httpx2.AsyncClient, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        while True:
            view: dict[str, Any] = (await http.get(f"/v1/jobs/{job_id}")).raise_for_status().json()
            if view["status"] in {"succeeded", "failed", "cancelled"}:
                return view
            await asyncio.sleep(0.01)


def batch_line(custom_id: str, text: str, **preferences: Any) -> str:
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    if preferences:
        body["preferences"] = preferences
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


async def test_batch_api_lines_honour_preferences_cache_and_show_hits(api: LiveApi) -> None:
    sdk = api.openai(await api.key("acme"))
    lines = [
        batch_line("paid", "Name a cape"),
        batch_line("bad", "Name a cape", cache={"mode": "sometimes"}),
        batch_line("skipped", "Name a cape", cache="off"),
    ]
    first = await run_batch(sdk, lines[:1])
    output = await run_batch(sdk, [*lines, batch_line("served", "Name a cape")])
    assert first["paid"]["routeq"]["cache_hit"] is False
    paid_job = first["paid"]["routeq"]["job_id"]
    assert output["paid"]["routeq"]["cache_source_job"] == paid_job  # the same line again: a hit
    assert output["served"]["routeq"]["cache_hit"] is True
    assert output["served"]["routeq"]["saved_usd"] == pytest.approx(first["paid"]["routeq"]["cost_usd"])
    assert output["skipped"]["routeq"]["cache_hit"] is False
    assert output["skipped"]["routeq"]["cost_usd"] > 0
    assert output["bad"]["error"]["message"].startswith("line 2: body.preferences.cache.mode:")


async def run_batch(sdk: Any, lines: list[str]) -> dict[str, dict[str, Any]]:
    """Every line of the batch's output and error files, by custom_id, once the batch is done."""
    uploaded = await sdk.files.create(file=("p.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    async with asyncio.timeout(WAIT_S):
        while batch.status not in {"completed", "failed", "cancelled", "expired"}:
            await asyncio.sleep(0.01)
            batch = await sdk.batches.retrieve(batch.id)
    rows: dict[str, dict[str, Any]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            content = await sdk.files.content(file_id)
            rows |= {row["custom_id"]: row for row in map(json.loads, content.text.splitlines())}
    return rows


async def test_stats_clear_and_policy_keep_to_the_tenant_and_its_rights(api: LiveApi) -> None:
    async with (
        await client(api, "acme") as plain,
        await client(api, "acme", admin=True) as admin,
        await client(api, "globex", operator=True) as operator,
    ):
        await chat(plain)
        await chat(plain)
        stats = (await plain.get("/v1/cache/stats")).raise_for_status().json()
        assert stats["object"] == "routeq.cache_stats"
        assert {k: stats[k] for k in ("tenant", "jobs", "hits", "misses", "hit_rate", "entries")} == {
            "tenant": "acme",
            "jobs": 2,
            "hits": 1,
            "misses": 1,
            "hit_rate": 0.5,
            "entries": 1,
        }
        assert stats["saved_usd"] > 0
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        later = (await plain.get("/v1/cache/stats", params={"since": future})).json()
        assert (later["jobs"], later["hits"], later["saved_usd"]) == (0, 0, 0)
        assert (await plain.get("/v1/cache/stats", params={"days": 1})).json()["hits"] == 1
        assert (await operator.get("/v1/cache/stats")).json()["jobs"] == 0  # its own tenant
        assert (await operator.get("/v1/cache/stats", params={"tenant": "acme"})).json()["hits"] == 1
        every = (await operator.get("/v1/cache/stats", params={"all_tenants": True})).json()
        assert (every["tenant"], every["hits"]) == (None, 1)

        for response, param, code in [
            (await plain.get("/v1/cache/stats", params={"tenant": "globex"}), "tenant", "not_operator"),
            (await admin.get("/v1/cache/stats", params={"all_tenants": True}), "all_tenants", "not_operator"),
            (await plain.post("/v1/cache/clear"), None, "not_admin"),
            (await plain.put("/v1/cache/policy", json={"enabled": False}), None, "not_admin"),
            (await admin.post("/v1/cache/clear", params={"tenant": "globex"}), "tenant", "not_operator"),
            (await admin.get("/v1/cache/policy", params={"tenant": "globex"}), "tenant", "not_operator"),
        ]:
            assert response.status_code == 403, response.text
            assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (param, code)

        cleared = (await admin.post("/v1/cache/clear")).raise_for_status().json()
        assert (cleared["object"], cleared["tenant"]) == ("routeq.cache_clear", "acme")
        assert datetime.fromisoformat(cleared["cleared_at"]) <= datetime.now(UTC)
        assert (await chat(plain)).headers["x-routeq-cache"] == "miss"  # the old answer is not served
        assert (await chat(plain)).headers["x-routeq-cache"] == "hit"  # the new one is
        assert (await plain.get("/v1/cache/stats")).json()["entries"] == 1
        assert (await operator.post("/v1/cache/clear", params={"tenant": "acme"})).status_code == 200
        bad_request(
            await operator.post("/v1/cache/clear", params={"tenant": "a\x00b"}), "query parameter tenant"
        )


async def test_a_tenants_policy_through_the_api(api: LiveApi) -> None:
    async with (
        await client(api, "initech") as plain,
        await client(api, "initech", admin=True) as admin,
        await client(api, "ops", operator=True) as operator,
    ):
        shown = (await plain.get("/v1/cache/policy")).raise_for_status().json()
        assert shown == {
            "object": "routeq.cache_policy",
            "tenant": "initech",
            "enabled": None,
            "ttl_s": None,
            "semantic": None,
            "threshold": None,
            "effective": {
                "enabled": True,
                "ttl_s": 7 * 24 * 3600,
                "semantic": False,
                "threshold": 0.95,
                "sampled": True,
            },
            "cleared_at": None,
        }
        refused = await admin.put("/v1/cache/policy", json={"threshold": 2})
        assert "less than or equal to 1" in bad_request(refused, "threshold")
        bad_request(await admin.put("/v1/cache/policy", json={"ttl_s": -1}), "ttl_s")
        bad_request(await admin.put("/v1/cache/policy", json={"colour": "red"}), "colour")

        # Before initech's first request: no worker holds its policy yet.
        changed = (await admin.put("/v1/cache/policy", json={"enabled": False, "ttl_s": 60})).json()
        assert (changed["enabled"], changed["ttl_s"], changed["semantic"]) == (False, 60, None)
        assert changed["effective"]["enabled"] is False
        assert changed["effective"]["ttl_s"] == 60
        assert (await chat(plain)).headers["x-routeq-cache"] == "off"
        assert (await chat(plain)).headers["x-routeq-cache"] == "off"
        assert (await chat(plain, preferences={"cache": "use"})).headers["x-routeq-cache"] == "miss"  # asked
        assert (await chat(plain, preferences={"cache": "use"})).headers["x-routeq-cache"] == "hit"

        reset = (await operator.put("/v1/cache/policy", params={"tenant": "initech"}, json={})).json()
        assert (reset["tenant"], reset["enabled"], reset["ttl_s"]) == ("initech", None, None)
        assert reset["effective"]["enabled"] is True
        assert (await operator.get("/v1/cache/policy")).json()["tenant"] == "ops"


async def test_analytics_count_hits_and_dollars_saved_per_tenant(api: LiveApi) -> None:
    async with (
        await client(api, "acme") as acme,
        await client(api, "globex") as globex,
        await client(api, "ops", operator=True) as operator,
    ):
        for _ in range(3):
            await chat(acme)
        await chat(globex)
        await chat(globex, preferences={"cache": "off"})
        mine = (await acme.get("/v1/analytics")).raise_for_status().json()
        assert {k: mine["cache"][k] for k in ("jobs", "hits", "misses", "hit_rate")} == {
            "jobs": 3,
            "hits": 2,
            "misses": 1,
            "hit_rate": 0.6667,
        }
        acme_stats = await api.backend.store.cache.stats("acme")
        assert mine["cache"]["saved_usd"] == pytest.approx(float(acme_stats.saved_usd))
        assert mine["cache_by_tenant"] is None
        every = (await operator.get("/v1/analytics", params={"all_tenants": True})).json()
        assert (every["cache"]["jobs"], every["cache"]["hits"]) == (4, 2)
        rows = {row["tenant"]: row for row in every["cache_by_tenant"]}
        assert set(rows) == {"acme", "globex"}
        assert (rows["globex"]["jobs"], rows["globex"]["hits"], rows["globex"]["saved_usd"]) == (1, 0, 0)
        assert rows["acme"]["saved_usd"] == mine["cache"]["saved_usd"]
