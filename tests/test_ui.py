"""The web dashboard (producer/ui) through the app in process (httpx over ASGI), on both backends.

Tenant acme runs a small batch (two answers, one job no deployment can serve) with a burst worker,
then every page is read and checked for what it shows: the contract's element ids with the batch's
real figures. Sign-in (good and bad key, the redirect to it, sign-out, a revoked key), CSRF (no
token, a foreign Origin), tenant isolation (globex gets 404 pages), the cancel form, the operator's
force form (and a tenant's 403), and the live stream (a snapshot, then its end with the batch).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx2
import pytest
from fastapi import FastAPI

from producer.api import create_app
from producer.api.context import ApiContext, attach, open_context
from router_core.fleet import Forced
from router_core.models import ChatRequest, Message, Preferences
from storage import keys
from storage.fleet.budgets import BudgetPeriod
from storage.jobs import NewJob
from tests.backends import Backend
from tests.conftest import TRIO, make_catalog

ORIGIN = "http://testserver"
WAIT_S = 15.0


@dataclass
class Ui:
    app: FastAPI
    backend: Backend
    ctx: ApiContext

    def client(self, **headers: str) -> httpx2.AsyncClient:
        transport = httpx2.ASGITransport(app=self.app)
        return httpx2.AsyncClient(transport=transport, base_url=ORIGIN, headers=headers, timeout=WAIT_S)

    async def key(self, tenant: str, *, operator: bool = False) -> tuple[str, str]:
        record, secret = await self.backend.store.api_keys.create(
            tenant=tenant, user_id="u1", admin=True, operator=operator
        )
        return record.id, secret

    @asynccontextmanager
    async def signed_in(self, tenant: str, *, operator: bool = False) -> AsyncIterator[httpx2.AsyncClient]:
        """A client signed in with a new key of `tenant`."""
        _, secret = await self.key(tenant, operator=operator)
        async with self.client() as client:
            answer = await client.post(
                "/ui/login", data={"api_key": secret, "next": "/ui"}, headers={"origin": ORIGIN}
            )
            assert answer.status_code == 303, answer.text
            yield client

    async def submit(self, tenant: str, prompts: list[tuple[str, Preferences]]) -> str:
        client = self.ctx.client(tenant, "u1")
        items = [
            NewJob(f"q-{i}", ChatRequest(messages=[Message(role="user", content=text)], preferences=prefs))
            for i, (text, prefs) in enumerate(prompts)
        ]
        return await client.submit_batch(items, name="ui-test.jsonl")


@pytest.fixture
async def ui(backend: Backend) -> AsyncIterator[Ui]:
    catalog = make_catalog(TRIO)
    redis = await backend.redis()
    app = create_app(backend.settings, redis=redis, store=backend.store, catalog=catalog)
    async with open_context(backend.settings, redis=redis, store=backend.store, catalog=catalog) as ctx:
        attach(app, ctx)
        yield Ui(app, backend, ctx)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def text_of(html: str, element_id: str) -> str:
    """The text inside the element with this id (tags stripped)."""
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert found, f"no #{element_id} on the page"
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


SMART_ONLY = Preferences(min_quality=0.9)  # cheap-a and fast-b are excluded: below_quality
NOBODY = Preferences(min_quality=0.99)  # no deployment: NoRouteError


async def test_sign_in_redirects_and_sign_out(ui: Ui) -> None:
    async with ui.client() as anonymous:
        answer = await anonymous.get("/ui/batches")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/login?next=/ui/batches"
        assert (await anonymous.get("/")).headers["location"] == "/ui"
        login = await anonymous.get("/ui/login?next=/ui/batches")
        assert 'id="login-form"' in login.text
        assert 'value="/ui/batches"' in login.text
        bad = await anonymous.post("/ui/login", data={"api_key": "rq-nope", "next": "/ui"})
        assert bad.status_code == 401
        assert "unknown or revoked" in text_of(bad.text, "login-error")
        assert "routeq_session" not in bad.headers.get("set-cookie", "")

        key_id, secret = await ui.key("acme")
        good = await anonymous.post("/ui/login", data={"api_key": secret, "next": "/ui/batches"})
        assert good.status_code == 303
        assert good.headers["location"] == "/ui/batches"
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Path=/ui" in cookie
        page = await anonymous.get("/ui/batches")
        assert page.status_code == 200
        assert text_of(page.text, "signed-in-as") == "acme / u1"
        # Redis holds the session under the cookie's hash: neither the cookie nor the secret.
        redis = await ui.backend.redis()
        stored = [k async for k in redis.scan_iter(match=keys.ui_session("*"))]
        assert len(stored) == 1
        assert 0 < await redis.ttl(stored[0]) <= keys.UI_SESSION_TTL_S
        assert secret not in str(await redis.get(stored[0]))

        out = await anonymous.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
        assert out.headers["location"] == "/ui/login"
        assert [k async for k in redis.scan_iter(match=keys.ui_session("*"))] == []
        assert (await anonymous.get("/ui/batches")).status_code == 303

        # A revoked key signs its sessions out on their next request.
        await anonymous.post("/ui/login", data={"api_key": secret})
        assert (await anonymous.get("/ui/workers")).status_code == 200
        await ui.backend.store.api_keys.revoke(key_id)
        assert (await anonymous.get("/ui/workers")).status_code == 303


async def test_csrf_and_origin(ui: Ui) -> None:
    batch_id = await ui.submit("acme", [("Name a river", Preferences())])
    async with ui.signed_in("acme") as acme:
        page = await acme.get(f"/ui/batches/{batch_id}")
        token = csrf_of(page.text)
        cancel = f"/ui/batches/{batch_id}/cancel"
        missing = await acme.post(cancel, data={})
        assert missing.status_code == 403
        assert "CSRF" in missing.text
        wrong = await acme.post(cancel, data={"csrf_token": "x" * 43})
        assert wrong.status_code == 403
        foreign = await acme.post(
            cancel, data={"csrf_token": token}, headers={"origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        assert "another site" in foreign.text
        referer = await acme.post(
            cancel, data={"csrf_token": token}, headers={"referer": "https://evil.example/x"}
        )
        assert referer.status_code == 403
        # Nothing was cancelled by the refused posts.
        assert (await ui.backend.store.batches.get(batch_id, tenant="acme")).cancelled_at is None
    async with ui.client() as anonymous:
        _, secret = await ui.key("acme")
        login = await anonymous.post(
            "/ui/login", data={"api_key": secret}, headers={"origin": "https://evil.example"}
        )
        assert login.status_code == 403


async def test_pages_show_a_finished_batch(ui: Ui) -> None:
    batch_id = await ui.submit(
        "acme", [("Name a river", Preferences()), ("Name a lake", SMART_ONLY), ("Name a sea", NOBODY)]
    )
    assert await ui.backend.run_worker() == 3
    async with ui.signed_in("acme") as acme:
        batch = (await acme.get(f"/ui/batches/{batch_id}")).text
        assert text_of(batch, "batch-status") == "completed"
        assert (
            text_of(batch, "count-total"),
            text_of(batch, "count-completed"),
            text_of(batch, "count-failed"),
        ) == (
            "3",
            "2",
            "1",
        )
        billed, _ = await ui.backend.store.ledger.billed(batch_id)
        # The budget scope's micro-dollars, each charge rounded up: the ledger's sum to a few millionths.
        assert abs(float(text_of(batch, "batch-cost").strip("$")) - float(billed)) < 5e-6
        assert billed > 0
        assert 'id="cancel-form"' not in batch
        # An ended batch's figures are computed once, then kept.
        assert await (await ui.backend.redis()).exists(keys.ui_batch_summary(batch_id))
        assert text_of((await acme.get(f"/ui/batches/{batch_id}")).text, "count-failed") == "1"
        deployments = re.findall(
            r'<tr data-deployment="([^"]+)"', batch.split('id="deployments"')[1].split("</table>")[0]
        )
        assert "smart-c" in deployments
        failures = batch.split('id="failures"')[1].split("</table>")[0]
        assert 'data-reason="NoRouteError"' in failures
        for link in ("download-results", "download-output", "download-errors"):
            assert f'id="{link}"' in batch
        job_ids = re.findall(r'class="job-link" href="/ui/jobs/([^"]+)"', batch)
        assert len(job_ids) == 3

        results = await acme.get(f"/ui/batches/{batch_id}/download/results")
        lines = [json.loads(line) for line in results.text.splitlines()]
        assert [line["custom_id"] for line in lines] == ["q-0", "q-1", "q-2"]
        errors = await acme.get(f"/ui/batches/{batch_id}/download/errors")
        assert [json.loads(line)["error"]["code"] for line in errors.text.splitlines()] == ["NoRouteError"]
        output = await acme.get(f"/ui/batches/{batch_id}/download/output")
        assert len(output.text.splitlines()) == 2

        job = (await acme.get(f"/ui/jobs/{job_ids[1]}")).text
        assert text_of(job, "job-status") == "succeeded"
        exclusions = re.findall(r'<li class="exclusion" data-deployment="([^"]+)"', job)
        assert sorted(exclusions) == ["cheap-a", "fast-b"]
        assert "below_quality" in job
        assert "The plan run 1 routed with" in job  # recorded by the worker, not planned again now
        await ui.ctx.fleet.force("smart-c", Forced.DOWN)  # a plan made now would leave smart-c out
        as_run = (await acme.get(f"/ui/jobs/{job_ids[1]}")).text
        assert sorted(re.findall(r'<li class="exclusion" data-deployment="([^"]+)"', as_run)) == exclusions
        await ui.ctx.fleet.force("smart-c", None)
        attempts = re.findall(r'<li class="attempt success" data-deployment="([^"]+)"', job)
        assert attempts == ["smart-c"]
        assert text_of(job, "answer")
        unroutable = (await acme.get(f"/ui/jobs/{job_ids[2]}")).text
        assert text_of(unroutable, "job-status") == "failed"
        assert sorted(re.findall(r'<li class="exclusion" data-deployment="([^"]+)"', unroutable)) == [
            "cheap-a",
            "fast-b",
            "smart-c",
        ]
        assert "NoRouteError" in text_of(unroutable, "answer")
        assert text_of(job, "job-cost").startswith("$")

        listing = (await acme.get("/ui/batches")).text
        row = listing.split(f'data-batch-id="{batch_id}"')[1].split("</tr>")[0]
        assert "completed" in row
        assert ">3/3<" in row
        assert 'class="batch-link"' in row

        overview = (await acme.get("/ui")).text
        assert int(text_of(overview, "queue-depth")) == 0
        assert float(text_of(overview, "spend-today").strip("$")) > 0
        assert sorted(re.findall(r'<tr data-deployment="([^"]+)"', overview)) == [
            "cheap-a",
            "fast-b",
            "smart-c",
        ]
        for figure in ("workers-count", "in-flight"):
            assert text_of(overview, figure).isdigit()
        assert float(text_of(overview, "jobs-per-s")) == 0.05  # 3 jobs finished in the last minute
        assert '<polyline points="' in overview  # the last half hour's trend

        analytics = (await acme.get("/ui/analytics")).text
        assert 'id="cost-chart"' in analytics
        assert "<rect" in analytics.split('id="cost-chart"')[1]
        latency = analytics.split('id="latency"')[1].split("</table>")[0]
        assert 'data-deployment="smart-c"' in latency
        assert text_of(analytics, "failovers") == "0"
        assert 'id="cache"' in analytics
        assert 'id="quality"' in analytics

        await ui.ctx.budgets.set_cap("end_user:acme/alice", 2.0)  # acme's: shown
        await ui.ctx.budgets.set_cap("tenant:acme", 30.0, period=BudgetPeriod.MONTHLY)  # and its period caps
        await ui.ctx.budgets.set_cap("tenant:globex", 5.0)  # another tenant's: not shown
        budgets = (await acme.get("/ui/budgets")).text
        assert 'data-scope="end_user:acme/alice"' in budgets
        assert "globex" not in budgets
        assert 'data-scope="tenant:acme" data-period="lifetime"' in budgets
        assert 'data-scope="tenant:acme" data-period="monthly"' in budgets
        assert 'data-scope="user:acme/u1"' in budgets

        providers = (await acme.get("/ui/providers")).text
        assert re.findall(r'<td class="simulated">(\w+)</td>', providers) == ["simulated"] * 3
        assert "force-form" not in providers  # not an operator

        workers = (await acme.get("/ui/workers")).text
        assert 'id="workers"' in workers

        # globex sees none of it: every id of acme's is the 404 page.
        async with ui.signed_in("globex") as globex:
            for path in (f"/ui/batches/{batch_id}", f"/ui/jobs/{job_ids[0]}", f"/ui/batches/{batch_id}/live"):
                foreign = await globex.get(path)
                assert foreign.status_code == 404, path
                assert "Not found" in foreign.text, path
            assert batch_id not in (await globex.get("/ui/batches")).text
            download = await globex.get(f"/ui/batches/{batch_id}/download/results")
            assert download.status_code == 404


async def test_cancel_form_and_live_stream(ui: Ui) -> None:
    batch_id = await ui.submit("acme", [(f"Name a hill {i}", Preferences()) for i in range(3)])
    async with ui.signed_in("acme") as acme:
        page = (await acme.get(f"/ui/batches/{batch_id}")).text
        assert text_of(page, "batch-status") == "in_progress"
        assert 'id="cancel-batch"' in page
        assert f'data-live="/ui/batches/{batch_id}/live"' in page
        live = asyncio.create_task(acme.get(f"/ui/batches/{batch_id}/live"))
        await asyncio.sleep(0)  # the stream sends its first snapshot, then waits on the batch's events
        answer = await acme.post(f"/ui/batches/{batch_id}/cancel", data={"csrf_token": csrf_of(page)})
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/ui/batches/{batch_id}"
        async with asyncio.timeout(WAIT_S):
            streamed = await live
        assert streamed.headers["content-type"].startswith("text/event-stream")
        snapshots = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert snapshots[-1]["status"] == "cancelled"
        assert snapshots[-1]["ended"]
        assert snapshots[-1]["failed"] == 3
        assert not snapshots[-1]["cancellable"]
        after = (await acme.get(f"/ui/batches/{batch_id}")).text
        assert text_of(after, "batch-status") == "cancelled"
        assert 'id="cancel-form"' not in after
        # The list's stream: one snapshot per batch shown, then its end (nothing left running).
        listing = await acme.get(f"/ui/batches/live?ids={batch_id}")
        assert '"status":"cancelled"' in listing.text
        assert "event: end" in listing.text


async def test_live_stream_follows_a_running_batch(ui: Ui) -> None:
    batch_id = await ui.submit("acme", [("Name a cape", Preferences()), ("Name a bay", Preferences())])
    async with ui.signed_in("acme") as acme:
        live = asyncio.create_task(acme.get(f"/ui/batches/{batch_id}/live"))
        await asyncio.sleep(0)
        assert await ui.backend.run_worker() == 2
        async with asyncio.timeout(WAIT_S):
            streamed = await live
    snapshots = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert snapshots[-1]["status"] == "completed"
    assert snapshots[-1]["completed"] == 2
    assert snapshots[-1]["cost_usd"] > 0


async def test_operator_forces_a_deployment_and_dev_mode(ui: Ui) -> None:
    async with ui.signed_in("acme") as tenant:
        page = (await tenant.get("/ui/providers")).text
        refused = await tenant.post(
            "/ui/providers/fast-b/force", data={"csrf_token": csrf_of(page), "state": "down"}
        )
        assert refused.status_code == 403
    async with ui.signed_in("ops", operator=True) as operator:
        page = (await operator.get("/ui/providers")).text
        assert page.count('class="force-form"') == 3
        token = csrf_of(page)
        down = await operator.post("/ui/providers/fast-b/force", data={"csrf_token": token, "state": "down"})
        assert down.status_code == 303
        assert down.headers["location"] == "/ui/providers"
        shown = (await operator.get("/ui/providers")).text
        row = shown.split('data-deployment="fast-b"')[1].split("</tr>")[0]
        assert re.search(r'class="circuit">.*forced down', row, re.S)
        snapshot = await ui.ctx.fleet.snapshot(["fast-b"])
        assert snapshot["fast-b"].forced is not None
        assert snapshot["fast-b"].forced.value == "down"
        bad = await operator.post(
            "/ui/providers/fast-b/force", data={"csrf_token": token, "state": "sideways"}
        )
        assert bad.status_code == 400
        unknown = await operator.post("/ui/providers/nope/force", data={"csrf_token": token, "state": "up"})
        assert unknown.status_code == 404
        await operator.post("/ui/providers/fast-b/force", data={"csrf_token": token, "state": "auto"})
        assert (await ui.ctx.fleet.snapshot(["fast-b"]))["fast-b"].forced is None

    # Dev mode (`routeq run --serve`): no sign-in, operator rights, forms still need the page's token.
    ui.ctx.settings = ui.ctx.settings.model_copy(update={"api_dev_mode": True})
    async with ui.client() as anyone:
        dev = await anyone.get("/ui/providers")
        assert dev.status_code == 200
        assert "force-form" in dev.text
        assert text_of(dev.text, "signed-in-as") == "default / default"
        token = csrf_of(dev.text)
        assert (await anyone.post("/ui/providers/fast-b/force", data={"state": "down"})).status_code == 403
        done = await anyone.post("/ui/providers/fast-b/force", data={"csrf_token": token, "state": "auto"})
        assert done.status_code == 303
