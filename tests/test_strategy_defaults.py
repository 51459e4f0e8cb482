"""The strategy of a request that names none: the request's own > its tenant's default > the
environment's (ROUTEQ_DEFAULT_STRATEGY) > balanced, on both backends.

The resolution happens where the job is made, and the job says which strategy it was routed by and
where it came from; `POST /v1/route` resolves the same way, so its preview names the deployment the
worker then uses. The tenant's default is set through the API (admin keys) and the CLI.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner, Result

from producer.cli import app
from producer.client import Client
from producer.inputs import parse_chunks
from producer.strategy_defaults import StrategyDefaults
from router_core.models import ChatRequest, Strategy
from router_core.policy import parse_default_strategy, with_default_strategy
from storage.jobs import NewJob
from storage.settings import Settings
from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend, open_backend

WAIT_S = 15.0
PROMPT = [{"role": "user", "content": "Name a lighthouse"}]


def unnamed(**preferences: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": PROMPT, "preferences": preferences})


def test_each_level_applies_only_when_the_ones_before_it_name_nothing() -> None:
    tenant, environment = Strategy.QUALITY, Strategy.COST
    cases = [
        (unnamed(strategy="speed"), tenant, environment, ("speed", "request")),
        (unnamed(strategy="balanced"), tenant, None, ("balanced", "request")),  # named, though the default
        (unnamed(min_quality=0.5), tenant, environment, ("quality", "tenant")),
        (unnamed(), None, environment, ("cost", "environment")),
        (unnamed(), None, None, ("balanced", "default")),
    ]
    for request, tenant_default, environment_default, expected in cases:
        prefs = with_default_strategy(request, tenant_default, environment_default).preferences
        assert (prefs.strategy.value, prefs.strategy_source) == expected
    resolved = with_default_strategy(unnamed(), tenant, environment)
    assert with_default_strategy(resolved, None, None) is resolved  # resolved once, kept after


def test_bad_strategy_names_are_refused_with_the_known_ones() -> None:
    assert parse_default_strategy(" Fast ") is Strategy.SPEED
    with pytest.raises(ValueError, match=r"unknown strategy 'cheapest' \(known: cost, speed, quality"):
        parse_default_strategy("cheapest")
    with pytest.raises(
        ValueError, match="'fallback_chain' cannot be a default: it needs the request's own 'chain'"
    ):
        parse_default_strategy("fallback_chain")
    with pytest.raises(ValidationError, match=r"(?s)default_strategy.*unknown strategy 'cheapest'"):
        Settings(_env_file=None, default_strategy="cheapest")
    assert Settings(_env_file=None, default_strategy="accurate").default_strategy is Strategy.QUALITY


async def test_a_process_keeps_a_tenants_default_for_its_ttl(backend: Backend) -> None:
    now = [0.0]
    defaults = StrategyDefaults(backend.store, Strategy.COST, ttl_s=5.0, clock=lambda: now[0])
    assert await defaults.tenant_default("acme") is None
    await backend.store.api_keys.set_default_strategy("acme", Strategy.QUALITY)
    assert (await defaults.resolve(unnamed(), "acme")).preferences.strategy_source == "environment"
    now[0] = 5.0  # the bound: from here on the new default is read
    resolved = (await defaults.resolve(unnamed(), "acme")).preferences
    assert (resolved.strategy, resolved.strategy_source) == (Strategy.QUALITY, "tenant")
    await backend.store.api_keys.set_default_strategy("acme", None)
    defaults.forget("acme")  # a change made through this process: seen at once
    assert await defaults.tenant_default("acme") is None


async def test_submitted_files_and_batches_get_the_tenants_default(backend: Backend) -> None:
    """`routeq submit` and `routeq run` (Client.submit_chunks) and Client.submit_batch resolve as the API
    does."""
    await backend.store.api_keys.set_default_strategy("acme", Strategy.QUALITY)
    lines = [
        json.dumps({"prompt": "Name a lighthouse"}),
        json.dumps({"prompt": "Hi", "model": "router:cost"}),
    ]
    client = Client(await backend.redis(), backend.store, backend.settings, tenant="acme", all_tenants=True)
    try:
        progress = await client.submit_chunks(parse_chunks(lines, chunk_lines=1))
        assert progress.batch_id is not None
        batch_id = await client.submit_batch([NewJob("q", unnamed())])
        stored = [job for b in (progress.batch_id, batch_id) async for job in client.results(b)]
    finally:
        await client.close()
    sources = [
        (job.request["preferences"].get("strategy"), job.request["preferences"]["strategy_source"])
        for job in stored
    ]
    assert sources == [("quality", "tenant"), ("cost", "request"), ("quality", "tenant")]


@pytest.fixture(params=["embedded", "services"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveApi]:
    async with (
        open_backend(request.param, tmp_path) as backend,
        serve_api(backend, api_wait_timeout_s=WAIT_S, default_strategy=Strategy.COST) as live,
    ):
        yield live


def http(api: LiveApi, secret: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}, timeout=WAIT_S)


async def routed(client: httpx2.AsyncClient, **body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plan `POST /v1/route` previews for `body`, then the job's routing when it runs."""
    body = {"model": "auto", "messages": PROMPT, **body}
    preview = await client.post("/v1/route", json=body)
    assert preview.status_code == 200, preview.text
    answer = await client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    job = await client.get(f"/v1/jobs/{answer.headers['x-routeq-job-id']}")
    assert job.json()["routeq"] == answer.json()["routeq"]
    return preview.json(), job.json()["routeq"]


async def test_the_job_and_its_preview_use_the_same_default(api: LiveApi) -> None:
    admin_secret, user_secret = await api.key("acme", admin=True), await api.key("acme")
    async with http(api, admin_secret) as admin, http(api, user_secret) as user:
        plan, job = await routed(user)  # ROUTEQ_DEFAULT_STRATEGY=cost
        assert (plan["strategy"], plan["strategy_source"], plan["primary"]["deployment"]) == (
            "cost",
            "environment",
            "cheap-a",
        )
        assert (job["strategy"], job["strategy_source"], job["deployment"]) == (
            "cost",
            "environment",
            "cheap-a",
        )

        not_admin = await user.put("/v1/tenant/settings", json={"default_strategy": "quality"})
        assert (not_admin.status_code, not_admin.json()["error"]["code"]) == (403, "not_admin")
        for bad, says in [
            ("cheapest", "unknown strategy 'cheapest' (known: cost,"),
            ("fallback_chain", "chain"),
        ]:
            refused = await admin.put("/v1/tenant/settings", json={"default_strategy": bad})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == "default_strategy"
            assert says in refused.json()["error"]["message"]
        made = await admin.put("/v1/tenant/settings", json={"default_strategy": "quality"})
        assert made.status_code == 200, made.text
        shown = (await user.get("/v1/tenant/settings")).json()
        assert shown == made.json()
        assert (shown["default_strategy"], shown["environment_default_strategy"]) == ("quality", "cost")
        assert shown["effective_default_strategy"] == {"strategy": "quality", "source": "tenant"}

        plan, job = await routed(user)
        assert (plan["strategy"], plan["strategy_source"], plan["primary"]["deployment"]) == (
            "quality",
            "tenant",
            "smart-c",
        )
        assert (job["strategy"], job["strategy_source"], job["deployment"]) == (
            "quality",
            "tenant",
            "smart-c",
        )
        for own in ({"preferences": {"strategy": "cost"}}, {"model": "router:cost"}):
            plan, job = await routed(user, **own)
            assert (plan["strategy_source"], plan["primary"]["deployment"]) == ("request", "cheap-a")
            assert (job["strategy"], job["strategy_source"], job["deployment"]) == (
                "cost",
                "request",
                "cheap-a",
            )

        claimed = await user.post(
            "/v1/route",
            json={"model": "auto", "messages": PROMPT, "preferences": {"strategy_source": "tenant"}},
        )
        assert claimed.status_code == 400, claimed.text
        assert "preferences.strategy_source is set by routeq" in claimed.json()["error"]["message"]

    other = await api.key("other")
    async with http(api, other) as client:  # another tenant: the environment's default still
        plan, job = await routed(client)
        assert (plan["strategy_source"], job["strategy_source"], job["deployment"]) == (
            "environment",
            "environment",
            "cheap-a",
        )


async def test_the_cli_sets_and_shows_a_tenants_default(
    backend_on_file: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", backend_on_file.settings.database_url)
    monkeypatch.delenv("ROUTEQ_REDIS_URL", raising=False)
    monkeypatch.setenv("ROUTEQ_TENANT", "acme")

    def invoke(*args: str) -> Result:  # in a thread: the command runs its own event loop
        return CliRunner().invoke(app, list(args))

    bad = await asyncio.to_thread(invoke, "tenant", "set-default-strategy", "acme", "cheapest")
    assert bad.exit_code == 2
    assert "unknown strategy 'cheapest' (known: cost, speed" in bad.output
    made = await asyncio.to_thread(invoke, "tenant", "set-default-strategy", "acme", "accurate")
    assert made.exit_code == 0, made.output
    assert await backend_on_file.store.api_keys.default_strategy("acme") is Strategy.QUALITY
    shown = json.loads((await asyncio.to_thread(invoke, "tenant", "show", "acme", "--json")).output)
    assert shown["effective_default_strategy"] == {"strategy": "quality", "source": "tenant"}
    table = (await asyncio.to_thread(invoke, "tenant", "show", "acme")).output
    assert "a request naming no strategy gets: quality (from the tenant)" in table

    planned = await asyncio.to_thread(invoke, "plan", "Name a lighthouse", "--json")  # as ROUTEQ_TENANT
    assert planned.exit_code == 0, planned.output
    assert (json.loads(planned.output)["strategy"], json.loads(planned.output)["strategy_source"]) == (
        "quality",
        "tenant",
    )
    cleared = await asyncio.to_thread(invoke, "tenant", "set-default-strategy", "acme", "none")
    assert cleared.exit_code == 0, cleared.output
    assert await backend_on_file.store.api_keys.default_strategy("acme") is None
