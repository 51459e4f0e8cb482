"""Keys limited to allowed models, on both backends: every entry point refuses a model the key may not
use (403 `model_not_allowed` naming it and the allowed list; a batch line's error with its number),
`auto` and the strategies route among the allowed deployments only (the plan excludes the others as
"not allowed for this key"; the simulated world records no call to them), and `GET /v1/models`
lists what the key may name. Keys get their models from `routeq keys create/limit`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from typer.testing import CliRunner, Result

from producer.cli import app
from router_core.catalog import Catalog, load_catalog
from router_core.models import ChatRequest
from router_core.planner import answer_fits, build_plan
from router_core.policy import model_allowed, unhonoured_field
from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend, open_backend

WAIT_S = 15.0
PROMPT = [{"role": "user", "content": "Name a lighthouse"}]
ALLOWED = ["cheap/*", "fast-b"]  # TRIO: provider "cheap" (cheap-a), fast-b; not smart-c
REFUSED = "'smart-c' is not allowed for this API key (allowed models: cheap/*, fast-b)"


def test_patterns_name_ids_models_and_provider_paths(trio: Catalog) -> None:
    demo = load_catalog(None)
    assert model_allowed(["openai/*"], demo["gpt-4o-mini"])
    assert not model_allowed(["openai/*"], demo["claude-haiku-4-5"])
    assert model_allowed(["claude-*"], demo["claude-haiku-4-5"])
    assert model_allowed(["mistral-small-latest"], demo["mistral-small"])  # the served model's name
    sampled = ChatRequest.model_validate({"messages": PROMPT, "temperature": 0.5})
    field, why = unhonoured_field(sampled, ["claude-*"], demo) or ("", "")
    assert (field, why) == (
        "temperature",
        "no deployment this API key may use honours it (claude-haiku-4-5, claude-sonnet-4-6: none has "
        "'temperature')",
    )
    assert unhonoured_field(sampled, ["claude-*", "openai/*"], demo) is None
    assert [d.id for d in trio.values() if model_allowed(ALLOWED, d)] == ["cheap-a", "fast-b"]

    request = ChatRequest.model_validate(
        {"messages": PROMPT, "preferences": {"strategy": "quality", "allowed_models": ALLOWED}}
    )
    plan = build_plan(request, trio, {})
    assert [c.deployment for c in plan.candidates] == ["fast-b", "cheap-a"]
    [excluded] = plan.excluded
    assert (excluded.deployment, excluded.reason) == ("smart-c", "not_allowed")
    assert excluded.detail == "not allowed for this key (allowed models: cheap/*, fast-b)"
    assert answer_fits(request, trio["smart-c"]) == excluded.detail  # nor served from the cache
    assert answer_fits(request, trio["fast-b"]) is None


@pytest.fixture(params=["embedded", "services"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveApi]:
    async with (
        open_backend(request.param, tmp_path) as backend,
        serve_api(backend, api_wait_timeout_s=WAIT_S) as live,
    ):
        yield live


async def limited_client(api: LiveApi) -> httpx2.AsyncClient:
    _, secret = await api.backend.store.api_keys.create(tenant="acme", user_id="u1", allowed_models=ALLOWED)
    headers = {"Authorization": f"Bearer {secret}", "x-api-key": secret}
    return httpx2.AsyncClient(base_url=api.url, headers=headers, timeout=WAIT_S)


def refused(response: httpx2.Response, param: str = "model") -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("model_not_allowed", param, "permission_error")
    assert REFUSED in error["message"] or "smart-c-model" in error["message"]


async def test_a_limited_key_routes_inside_its_models_and_every_entry_point_refuses_others(
    api: LiveApi,
) -> None:
    await auto_routing_stays_inside_the_allowed_models(api)  # first: the batch below calls deployments too
    async with await limited_client(api) as client:
        chat = {"messages": PROMPT, "max_tokens": 20}
        refused(await client.post("/v1/chat/completions", json={**chat, "model": "smart-c"}))
        refused(await client.post("/v1/chat/completions", json={**chat, "model": "smart-c-model"}))
        refused(await client.post("/v1/messages", json={**chat, "model": "smart-c"}))
        refused(await client.post("/v1/jobs", json={"prompt": "Name a lighthouse", "model": "smart-c"}))
        refused(await client.post("/v1/route", json={**chat, "model": "smart-c"}))
        chain = {"strategy": "fallback_chain", "chain": ["fast-b", "smart-c"]}
        refused(
            await client.post("/v1/route", json={**chat, "model": "auto", "preferences": chain}),
            param="preferences.chain",
        )
        widened = await client.post(
            "/v1/route", json={**chat, "model": "auto", "preferences": {"allowed_models": ["*"]}}
        )
        assert widened.status_code == 400, widened.text
        assert "preferences.allowed_models is set by routeq" in widened.json()["error"]["message"]

        models = (await client.get("/v1/models")).json()["data"]
        names = {m["id"] for m in models}
        assert {"auto", "router:quality", "cheap-a", "cheap-a-model", "fast-b", "fast-b-model"} <= names
        assert not {"smart-c", "smart-c-model"} & names
        assert (await client.get("/v1/models/smart-c")).status_code == 404

        files = {"file": ("in.jsonl", _batch_file(), "application/jsonl")}
        uploaded = await client.post("/v1/files", data={"purpose": "batch"}, files=files)
        assert uploaded.status_code == 200, uploaded.text
        batch = await client.post(
            "/v1/batches",
            json={
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert batch.status_code == 200, batch.text
        [error] = batch.json()["errors"]["data"]
        assert error["line"] == 2
        assert error["message"] == f"model {REFUSED}"
        assert batch.json()["request_counts"]["total"] == 3


def _batch_file() -> bytes:
    lines: list[dict[str, Any]] = [
        {"custom_id": f"q{n}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": model}}
        for n, model in enumerate(["auto", "smart-c", "cheap-a"], start=1)
    ]
    for line in lines:
        line["body"]["messages"] = PROMPT
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def auto_routing_stays_inside_the_allowed_models(api: LiveApi) -> None:
    assert api.sim_world is not None
    async with await limited_client(api) as client:
        body = {"model": "router:quality", "messages": PROMPT, "max_tokens": 20}  # quality: smart-c first
        plan = (await client.post("/v1/route", json=body)).json()
        assert [c["deployment"] for c in plan["candidates"]] == ["fast-b", "cheap-a"]
        assert [(e["deployment"], e["reason"]) for e in plan["excluded"]] == [("smart-c", "not_allowed")]
        assert plan["excluded"][0]["detail"].startswith("not allowed for this key")

        answer = await client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-routeq-deployment"] == "fast-b"
        job = (await client.get(f"/v1/jobs/{answer.headers['x-routeq-job-id']}")).json()
        assert {a["deployment"] for a in job["attempts"]} == {"fast-b"}
    assert len(api.sim_world.last_requests("fast-b")) == 1
    assert api.sim_world.last_requests("smart-c") == []

    unlimited = await api.key("acme")
    async with httpx2.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {unlimited}"}
    ) as other:
        assert "smart-c" in {m["id"] for m in (await other.get("/v1/models")).json()["data"]}


async def test_the_cli_creates_and_limits_a_keys_models(
    backend_on_file: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", backend_on_file.settings.database_url)
    monkeypatch.delenv("ROUTEQ_CATALOG_PATH", raising=False)  # the demo catalog

    def invoke(*args: str) -> Result:  # in a thread: the command runs its own event loop
        return CliRunner().invoke(app, list(args))

    made = await asyncio.to_thread(
        invoke, "keys", "create", "--tenant", "acme", "--user", "u", "--rpm", "5",
        "--allow-model", "openai/*", "--allow-model", "claude-haiku-4-5",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "allowed models: openai/*, claude-haiku-4-5" in made.output
    [key] = await backend_on_file.store.api_keys.list(tenant="acme")
    assert key.allowed_models == ("openai/*", "claude-haiku-4-5")

    typo = await asyncio.to_thread(invoke, "keys", "limit", key.id, "--allow-model", "gpt-9")
    assert typo.exit_code == 2
    assert "--allow-model 'gpt-9' names no chat deployment in the catalog" in typo.output
    narrowed = await asyncio.to_thread(invoke, "keys", "limit", key.id, "--allow-model", "gpt-4o-mini")
    assert narrowed.exit_code == 0, narrowed.output
    [key] = await backend_on_file.store.api_keys.list(tenant="acme")
    assert (key.allowed_models, key.limits.rpm) == (("gpt-4o-mini",), 5)  # its rate limits stay
    listed = json.loads((await asyncio.to_thread(invoke, "keys", "list", "--json")).output)
    assert listed["keys"][0]["allowed_models"] == ["gpt-4o-mini"]

    lifted = await asyncio.to_thread(invoke, "keys", "limit", key.id, "--allow-all-models")
    assert lifted.exit_code == 0, lifted.output
    rates = await asyncio.to_thread(invoke, "keys", "limit", key.id, "--rpm", "9")
    assert rates.exit_code == 0, rates.output
    [key] = await backend_on_file.store.api_keys.list(tenant="acme")
    assert (key.allowed_models, key.limits.rpm) == (None, 9)
