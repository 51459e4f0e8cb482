"""The live catalog through the operator API, on both backends: two API apps share Redis and SQL as two
processes would (in-process ASGI; only the process boundary is left out).

Every change kind (add, change, disable, remove) is a new version that `/v1/providers` and `/v1/models`
show at once on the app that made it and within the bound on the other; a bad field is a 400 whose
`param` names it, an unknown id a 404, a change against an old version a 409, a plain key a 403.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from producer.api import create_app
from router_core import catalog_edit
from tests.backends import Backend
from tests.conftest import TRIO, deployment
from tests.fleet import until

# The apps' version check runs this rarely: a change another app sees within PUSHED_S came by its
# message (a wall-clock bound of 0.5 s on the pick-up failed on a busy machine).
REFRESH_S = 60.0
PUSHED_S = 10.0
CATALOG = "/v1/admin/catalog"
DEPLOYMENTS = "/v1/admin/catalog/deployments"


@asynccontextmanager
async def api_app(backend: Backend, secret: str) -> AsyncIterator[httpx2.AsyncClient]:
    """One API app following the live catalog (no catalog given), with its lifespan, as `secret`."""
    app = create_app(backend.settings, redis=await backend.redis(), store=backend.store)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx2.AsyncClient(transport=transport, base_url="http://api", headers=headers) as http:
            yield http


@pytest.fixture
async def apis(backend: Backend, tmp_path: Path) -> AsyncIterator[tuple[httpx2.AsyncClient, ...]]:
    """Two operator clients on two apps, and a plain key's client on the first."""
    path = tmp_path / "catalog.toml"
    path.write_text(catalog_edit.to_toml({"deployments": TRIO}), "utf-8")
    backend.settings = backend.settings.model_copy(
        update={"catalog_path": path, "catalog_refresh_s": REFRESH_S}
    )
    _, operator = await backend.store.api_keys.create(tenant="ops", user_id="alice", operator=True)
    _, plain = await backend.store.api_keys.create(tenant="acme", user_id="bob", admin=True)
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(api_app(backend, operator))
        two = await stack.enter_async_context(api_app(backend, operator))
        mere = await stack.enter_async_context(api_app(backend, plain))
        yield one, two, mere


async def ids(http: httpx2.AsyncClient) -> dict[str, Any]:
    providers = (await http.get("/v1/providers")).json()["data"]
    models = {m["id"] for m in (await http.get("/v1/models")).json()["data"]}
    return {"providers": {p["id"]: p["enabled"] for p in providers}, "models": models}


def refused(response: httpx2.Response, status: int, param: str | None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return str(error["message"])


async def test_each_change_is_a_version_both_apps_serve(apis: tuple[httpx2.AsyncClient, ...]) -> None:
    one, two, _ = apis
    first = (await one.get(CATALOG)).json()
    assert (first["version"], first["author"], first["seeded"]) == (1, "seed", True)
    assert [d["id"] for d in first["deployments"]] == ["cheap-a", "fast-b", "smart-c"]

    added = await one.post(DEPLOYMENTS, json=deployment("new-d"), params={"comment": "trial"})
    assert added.status_code == 201, added.text
    assert (added.json()["version"], added.json()["author"]) == (2, "alice")
    seen = await ids(one)  # the app that made the change reads its own write
    assert "new-d" in seen["providers"]
    assert {"new-d", "new-d-model"} <= seen["models"]
    # Sooner than the version check (REFRESH_S): the change message woke it.
    await until(lambda: _has(two, "new-d"), timeout_s=PUSHED_S, what="the other app's pick-up", every_s=0.01)

    changed = await one.patch(f"{DEPLOYMENTS}/new-d", json={"rpm": 60, "quality": 0.91})
    assert changed.json()["version"] == 3
    provider = next(p for p in (await one.get("/v1/providers")).json()["data"] if p["id"] == "new-d")
    assert (provider["rate_limits"]["rpm"], provider["quality"]) == (60, 0.91)

    assert (await one.patch(f"{DEPLOYMENTS}/fast-b", json={"enabled": False})).json()["version"] == 4
    assert (await ids(one))["providers"]["fast-b"] is False
    plan = await one.post(
        "/v1/route", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    )
    excluded = {e["deployment"]: e["detail"] for e in plan.json()["excluded"]}
    assert excluded.get("fast-b") == "disabled in the catalog", plan.text

    assert (await one.delete(f"{DEPLOYMENTS}/new-d")).json()["version"] == 5
    assert "new-d" not in (await ids(one))["providers"]
    await until(lambda: _has(two, "new-d", present=False), timeout_s=PUSHED_S, what="removal", every_s=0.01)

    history = (await two.get(f"{CATALOG}/history")).json()["data"]
    assert [(v["version"], v["deployment_count"]) for v in history] == [
        (5, 3),
        (4, 4),
        (3, 4),
        (2, 4),
        (1, 3),
    ]
    assert history[3]["comment"] == "trial"
    old = (await two.get(CATALOG, params={"version": 2})).json()
    assert [d["id"] for d in old["deployments"]][-1] == "new-d"


async def _has(http: httpx2.AsyncClient, deployment_id: str, *, present: bool = True) -> bool:
    return (deployment_id in (await ids(http))["providers"]) is present


async def test_bad_changes_are_refused_naming_what_is_wrong(apis: tuple[httpx2.AsyncClient, ...]) -> None:
    one, _, mere = apis
    message = refused(await one.post(DEPLOYMENTS, json=deployment("bad-q", quality=3)), 400, "quality")
    assert "'bad-q'" in message
    refused(await one.post(DEPLOYMENTS, json=deployment("fast-b")), 400, "id")  # taken
    refused(await one.post(DEPLOYMENTS, json={**deployment("x-y"), "colour": "red"}), 400, "colour")
    refused(await one.patch(f"{DEPLOYMENTS}/fast-b", json={"context_window": -1}), 400, "context_window")
    refused(await one.patch(f"{DEPLOYMENTS}/cheap-a", json={"fallbacks": ["nowhere"]}), 400, "fallbacks")
    refused(await one.patch(f"{DEPLOYMENTS}/nope", json={"rpm": 1}), 404, "deployment_id")
    refused(await one.delete(f"{DEPLOYMENTS}/nope"), 404, "deployment_id")
    assert (await one.patch(f"{DEPLOYMENTS}/cheap-a", json={"fallbacks": ["smart-c"]})).status_code == 200
    # smart-c is cheap-a's fallback now: removing it would leave the catalog invalid.
    refused(await one.delete(f"{DEPLOYMENTS}/smart-c"), 400, "fallbacks")
    refused(await mere.get(CATALOG), 403, None)
    refused(await mere.patch(f"{DEPLOYMENTS}/cheap-a", json={"rpm": 1}), 403, None)
    assert (await one.get(CATALOG)).json()["version"] == 2  # nothing refused was written


async def test_two_apps_changing_at_once_lose_no_update(apis: tuple[httpx2.AsyncClient, ...]) -> None:
    one, two, _ = apis
    # Made against version 1 on both: one lands, the other is a 409 naming the newest version.
    answers = await asyncio.gather(
        one.patch(f"{DEPLOYMENTS}/fast-b", json={"rpm": 10}, params={"expected_version": 1}),
        two.patch(f"{DEPLOYMENTS}/cheap-a", json={"rpm": 20}, params={"expected_version": 1}),
    )
    assert sorted(a.status_code for a in answers) == [200, 409]
    conflict = next(a for a in answers if a.status_code == 409)
    assert "the newest is 2" in refused(conflict, 409, "expected_version")
    # Without expected_version each is applied on the newest: both fields are there after.
    await asyncio.gather(
        one.patch(f"{DEPLOYMENTS}/smart-c", json={"rpm": 30}),
        two.patch(f"{DEPLOYMENTS}/smart-c", json={"tpm": 4000}),
    )
    newest = (await one.get(CATALOG)).json()
    smart = next(d for d in newest["deployments"] if d["id"] == "smart-c")
    assert (newest["version"], smart["rpm"], smart["tpm"]) == (4, 30, 4000)
