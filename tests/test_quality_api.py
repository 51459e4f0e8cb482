"""Feedback and learned quality through the HTTP API and the CLI, on both backends.

A rating is the caller's tenant's (another tenant's job is a 404), field-checked (400 naming the
field), kept as history (`GET /v1/feedback`, paged) and counted for the deployment that answered:
`GET /v1/quality` shows its learned score next to the catalog's, with the samples behind it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from typer.testing import CliRunner, Result

from producer.cli import app
from tests.api_harness import LiveApi, serve_api
from tests.backends import open_backend
from tests.test_fleet import sim_deployment

WAIT_S = 15.0


@pytest.fixture(params=["embedded", "services"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveApi]:
    async with (
        open_backend(request.param, tmp_path) as backend,
        serve_api(backend, api_wait_timeout_s=WAIT_S) as live,
    ):
        yield live


async def client(api: LiveApi, tenant: str) -> httpx2.AsyncClient:
    secret = await api.key(tenant)
    return httpx2.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}, timeout=WAIT_S)


async def answered(http: httpx2.AsyncClient) -> str:
    """The id of the job that answered a chat completion."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "Name a lighthouse"}]}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers["x-routeq-job-id"]


async def test_ratings_are_the_tenants_history_and_move_the_learned_quality(api: LiveApi) -> None:
    async with await client(api, "acme") as acme, await client(api, "other") as other:
        job_id = await answered(acme)
        deployment = (await acme.get(f"/v1/jobs/{job_id}")).json()["routeq"]["deployment"]

        made = await acme.post("/v1/feedback", json={"job_id": job_id, "rating": 1, "category": "wrong"})
        assert made.status_code == 200, made.text
        assert made.json()["score"] == 0.0
        assert made.json()["deployment"] == deployment
        thumbs = await acme.post("/v1/feedback", json={"job_id": job_id, "thumbs": "down", "comment": "no"})
        assert thumbs.status_code == 200, thumbs.text

        both = await acme.post("/v1/feedback", json={"job_id": job_id, "rating": 2, "thumbs": "up"})
        assert both.status_code == 400, both.text
        assert both.json()["error"]["param"] == "rating"
        stars = await acme.post("/v1/feedback", json={"job_id": job_id, "rating": 9})
        assert stars.status_code == 400, stars.text
        assert stars.json()["error"]["param"] == "rating"
        foreign = await other.post("/v1/feedback", json={"job_id": job_id, "rating": 5})
        assert foreign.status_code == 404, foreign.text

        page = (await acme.get("/v1/feedback", params={"limit": 1})).json()
        assert [f["thumbs"] for f in page["data"]] == ["down"]
        assert page["has_more"]
        rest = (await acme.get("/v1/feedback", params={"after": page["last_id"]})).json()
        assert [f["rating"] for f in rest["data"]] == [1]
        assert (await other.get("/v1/feedback")).json()["data"] == []

        quality = (await acme.get("/v1/quality")).json()
        rows = {row["deployment"]: row for row in quality["data"]}
        rated = rows[deployment]
        assert (rated["source"], rated["samples"]) == ("learned", 2)
        assert rated["learned"] < rated["prior"]  # two zeros pulled it down
        assert [c["samples"] for c in rated["capabilities"]] == [2]
        assert all(row["source"] == "prior" for name, row in rows.items() if name != deployment)


@pytest.fixture(params=["embedded", "services"])
async def api_on_file(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveApi]:
    """The API on a database the CLI can open too (SQLite in a file, for the embedded backend)."""
    async with (
        open_backend(request.param, tmp_path, on_file=True) as backend,
        serve_api(backend, api_wait_timeout_s=WAIT_S) as live,
    ):
        yield live


async def test_the_cli_rates_lists_and_shows_quality(
    api_on_file: LiveApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = api_on_file
    async with await client(api, "acme") as acme:
        job_id = await answered(acme)
    settings = api.backend.settings
    catalog = tmp_path / "catalog.toml"  # the API's catalog (TRIO), for `routeq quality`
    catalog.write_text(
        sim_deployment("cheap-a", quality=0.6, price=(0.1, 0.4))
        + sim_deployment("fast-b", quality=0.75, price=(1.0, 4.0))
        + sim_deployment("smart-c", quality=0.95, price=(10.0, 40.0))
    )
    monkeypatch.setenv("ROUTEQ_CATALOG_PATH", str(catalog))
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", settings.database_url)
    if settings.redis_url:
        monkeypatch.setenv("ROUTEQ_REDIS_URL", settings.redis_url)

    def invoke(*args: str) -> Result:  # in a thread: the command runs its own event loop
        return CliRunner().invoke(app, list(args))

    rated = await asyncio.to_thread(invoke, "feedback", job_id, "--rating", "5", "--tenant", "acme", "--json")
    assert rated.exit_code == 0, rated.output
    assert json.loads(rated.output)["score"] == 1.0
    missing = await asyncio.to_thread(invoke, "feedback", job_id, "--rating", "5", "--tenant", "other")
    assert missing.exit_code == 1
    assert "no job" in missing.output
    listed = await asyncio.to_thread(invoke, "feedback", "--tenant", "acme", "--json")
    assert [f["job_id"] for f in json.loads(listed.output)["data"]] == [job_id]
    shown = await asyncio.to_thread(invoke, "quality", "--json")
    assert shown.exit_code == 0, shown.output
    assert sum(row["samples"] for row in json.loads(shown.output)["data"]) == 1
    table = await asyncio.to_thread(invoke, "quality")
    assert "learned" in table.output
    assert "prior" in table.output


async def test_route_previews_the_plan_and_queues_nothing(api: LiveApi) -> None:
    prompt = [{"role": "user", "content": "Name a lighthouse"}]
    async with await client(api, "acme") as acme:
        body = {"model": "auto", "messages": prompt, "preferences": {"strategy": "quality"}}
        view = (await acme.post("/v1/route", json=body)).json()
        assert view["routable"]
        assert [c["deployment"] for c in view["candidates"]] == ["smart-c", "fast-b", "cheap-a"]
        assert view["primary"]["deployment"] == "smart-c"
        assert (view["primary"]["quality"], view["primary"]["quality_source"]) == (0.95, "prior")
        assert view["primary"]["estimated_cost_usd"] > 0

        strict = {"model": "auto", "messages": prompt, "preferences": {"min_quality": 0.99}}
        none = (await acme.post("/v1/route", json=strict)).json()
        assert not none["routable"]
        assert {e["reason"] for e in none["excluded"]} == {"below_quality"}
        assert "min_quality" in none["message"]

        bad = await acme.post(
            "/v1/route", json={"model": "auto", "messages": prompt, "preferences": {"strategy": 1}}
        )
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["param"] == "preferences.strategy"
    redis = await api.backend.redis()
    assert await redis.zcard(api.backend.settings.queue_name) == 0
