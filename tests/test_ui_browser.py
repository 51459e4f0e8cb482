"""The dashboard (/ui) in headless Chromium, against the API and a live worker on real Redis + PostgreSQL.

One browser and one site serve the whole module (tests/browser.py); each test signs in with the key
it needs and asserts on what the page shows. Live updates are watched without reloading the page: a
marker set on `window` before the batch starts must still be there when it has ended.

Batches are created in SQL first and queued only once their page is open, so the page is seen
before any job has run, whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from sqlalchemy import func, select

from producer.client import Client
from router_core.catalog import Catalog
from router_core.models import ChatRequest, Message
from storage.jobs import CreatedBatch, JobStatus, NewJob
from storage.sql.schema import attempts, jobs
from tests.browser import LiveSite, absent, element, open_chromium, require_browser, text_of, wait_for
from tests.conftest import TRIO, deployment, make_catalog

# Each sim deployment answers after its latency, so a batch on a worker running four jobs at a
# time is visibly live for a moment. flaky-d always fails; shaky-e fails its first call only;
# slow-f is slow enough that a batch of it is still running when the test cancels it.
LATENCY_MS = {"cheap-a": 60, "fast-b": 40, "smart-c": 80}
EXTRA = [
    deployment("flaky-d", quality=0.5, sim={"error_rate": 1.0}),
    deployment("shaky-e", quality=0.8, sim={"script": ["server_error"], "latency_ms": 20}),
    deployment("slow-f", quality=0.7, sim={"latency_ms": 400}),
]
MARKER = "window.__routeqMarker"
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _catalog() -> Catalog:
    trio = [{**d, "sim": {"latency_ms": LATENCY_MS[d["id"]]}} for d in TRIO]
    return make_catalog(trio + EXTRA)


@dataclass(frozen=True)
class Keys:
    acme: str
    other: str
    operator: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSite]:
    require_browser()  # before starting anything
    live = LiveSite(tmp_path_factory.mktemp("site"), _catalog(), worker_concurrency=4)
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def keys(site: LiveSite) -> Keys:
    return Keys(site.key("acme"), site.key("other"), site.key("ops", operator=True))


@pytest.fixture(scope="module")
def browser(site: LiveSite) -> Iterator[WebDriver]:
    driver = open_chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def acme(site: LiveSite) -> Client:
    return site.client("acme")


# --- helpers ------------------------------------------------------------------------------------


def _job(custom_id: str, model: str, **fields: Any) -> NewJob:
    request = ChatRequest(
        messages=[Message(role="user", content=f"Say hello to {custom_id}")],
        model=model,
        max_tokens=20,
        **fields,
    )
    return NewJob(custom_id, request)


def sign_in(browser: WebDriver, site: LiveSite, key: str) -> None:
    """Sign out whoever was signed in, then sign in with `key` through the login form."""
    browser.get(f"{site.url}/ui/login")
    browser.delete_all_cookies()
    browser.get(f"{site.url}/ui/login")
    _submit_key(browser, key)
    element(browser, "#signed-in-as")


def _submit_key(browser: WebDriver, key: str) -> None:
    field = element(browser, "#api-key")
    field.clear()
    field.send_keys(key)
    element(browser, "#login-submit").click()


def _mark(browser: WebDriver) -> None:
    browser.execute_script(f"{MARKER} = 'not reloaded';")


def _not_reloaded(browser: WebDriver) -> bool:
    return bool(browser.execute_script(f"return {MARKER} === 'not reloaded';"))


def _fetch(browser: WebDriver, path: str, **init: Any) -> dict[str, Any]:
    """`fetch(path)` inside the page (its cookies, its origin): status and body text."""
    script = """
        const [path, init, done] = arguments;
        fetch(path, init).then(async r => done({status: r.status, body: await r.text()}),
                                e => done({status: -1, body: String(e)}));
    """
    result: dict[str, Any] = browser.execute_async_script(script, path, init)
    return result


def _count(browser: WebDriver, css: str) -> int:
    return int(text_of(browser, css).replace(",", ""))


def _dollars(shown: str) -> float:
    """The amount of a money figure as the page shows it ("$1,234.5678")."""
    return float(shown.removeprefix("$").replace(",", ""))


def _shown(browser: WebDriver) -> float:
    """Half the last digit #batch-cost shows: how far from the true amount its rounding may be."""
    decimals = len(text_of(browser, "#batch-cost").partition(".")[2])
    return 0.5 * 10.0**-decimals


def _rows(browser: WebDriver, table: str) -> list[list[str]]:
    """The text of each cell of each body row of `table`."""
    return [
        [cell.text.strip() for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, f"{table} tbody tr")
    ]


def _providers(site: LiveSite, key: str) -> dict[str, dict[str, Any]]:
    """GET /v1/providers with `key`: each deployment's view, by id."""
    reply = httpx2.get(f"{site.url}/v1/providers", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    reply.raise_for_status()
    return {view["id"]: view for view in reply.json()["data"]}


def _open_batch(browser: WebDriver, site: LiveSite, client: Client, items: list[NewJob]) -> CreatedBatch:
    """Create a batch in SQL, open its page, and only then queue it."""
    created = site.call(client.create(items, name="browser.jsonl"))
    browser.get(f"{site.url}/ui/batches/{created.batch_id}")
    assert text_of(browser, "#batch-status") == "in_progress"
    assert _count(browser, "#count-total") == len(items)
    assert _count(browser, "#count-completed") == 0
    _mark(browser)
    site.call(client.enqueue(created))
    return created


async def _reasons(client: Client, batch_id: str) -> dict[str, int]:
    """The batch's failed jobs per failure code, as the store has them."""
    found: dict[str, int] = {}
    async for job in client.results(batch_id):
        if job.status is JobStatus.FAILED and job.failure is not None:
            found[job.failure.code.value] = found.get(job.failure.code.value, 0) + 1
    return found


# --- the tests ----------------------------------------------------------------------------------


def test_sign_in_with_a_key_and_out_again(site: LiveSite, keys: Keys, browser: WebDriver) -> None:
    browser.get(f"{site.url}/ui/login")
    browser.delete_all_cookies()
    browser.get(f"{site.url}/ui")
    wait_for(browser, lambda d: "/ui/login" in d.current_url, "the redirect to the login page")

    _submit_key(browser, "rq-this-key-does-not-exist")
    error = text_of(browser, "#login-error")
    assert "unknown" in error.lower() or "revoked" in error.lower()
    assert absent(browser, "#signed-in-as")

    _submit_key(browser, keys.acme)
    assert "acme" in text_of(browser, "#signed-in-as")
    assert browser.current_url.rstrip("/") == f"{site.url}/ui"
    for figure in ("#queue-depth", "#workers-count", "#jobs-per-s", "#in-flight", "#spend-today"):
        element(browser, figure)
    for dep in _catalog():
        element(browser, f'#circuits tr[data-deployment="{dep}"]')
    session = browser.get_cookie("routeq_session")
    assert session is not None
    assert (session["httpOnly"], session["sameSite"], session["path"]) == (True, "Strict", "/ui")
    assert "routeq_session" not in browser.execute_script("return document.cookie;")

    element(browser, "#logout").click()
    element(browser, "#login-form")
    browser.get(f"{site.url}/ui/batches")
    wait_for(browser, lambda d: "/ui/login" in d.current_url, "the login page after signing out")


def test_a_batch_page_follows_the_batch_live(
    site: LiveSite, keys: Keys, browser: WebDriver, acme: Client
) -> None:
    sign_in(browser, site, keys.acme)
    items = [_job(f"q-{i}", ("cheap-a", "fast-b", "smart-c")[i % 3]) for i in range(21)]
    # Two failures for two reasons: every call failed (three calls: too few to open flaky-d's
    # circuit), and no deployment is cheap enough.
    items.append(_job("bad-calls", "flaky-d", preferences={"allow_fallbacks": False}))
    items.append(_job("bad-route", "auto", preferences={"max_cost_per_request": 1e-12}))
    created = _open_batch(browser, site, acme, items)
    element(browser, "#cancel-form")

    seen: list[int] = []

    def finished(driver: WebDriver) -> bool:
        seen.append(_count(driver, "#count-completed"))
        return text_of(driver, "#batch-status") == "completed"

    wait_for(browser, finished, "the batch to complete on its page")
    assert _not_reloaded(browser)
    assert seen == sorted(seen)  # the count only ever rose
    assert _count(browser, "#count-completed") == 21
    assert _count(browser, "#count-failed") == 2
    assert absent(browser, "#cancel-form")

    browser.refresh()  # the tables are drawn with the page; only the status and counts are live
    # A row per deployment used: its name, then its jobs (7 each).
    per_deployment = {row[0]: row[1] for row in _rows(browser, "#deployments")}
    assert per_deployment == {"cheap-a": "7", "fast-b": "7", "smart-c": "7"}
    # A row per failure code the store has, with its count.
    reasons = site.call(_reasons(acme, created.batch_id))
    assert sorted(reasons) == ["AllAttemptsFailedError", "NoRouteError"]
    assert {row[0]: int(row[1]) for row in _rows(browser, "#failures")} == reasons
    # The ledger's charges, to the digit shown; the live figure comes from the budget counters,
    # which round each charge up to a micro-dollar.
    billed, calls = site.call(site.backend.store.ledger.billed(created.batch_id))
    assert billed > 0
    slack = _shown(browser) + calls * 1e-6
    assert _dollars(text_of(browser, "#batch-cost")) == pytest.approx(float(billed), abs=slack)

    results = _fetch(browser, element(browser, "a#download-results").get_attribute("href") or "")
    assert results["status"] == 200
    lines = [json.loads(line) for line in results["body"].splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(item.custom_id for item in items)
    for link, expected in (("a#download-output", 21), ("a#download-errors", 2)):
        got = _fetch(browser, element(browser, link).get_attribute("href") or "")
        assert got["status"] == 200, link
        assert len(got["body"].splitlines()) == expected, link

    element(browser, "#jobs a.job-link").click()  # the first job, q-0
    assert text_of(browser, "#job-status") == "succeeded"
    assert f"/ui/jobs/{created.job_ids[0]}" in browser.current_url


def test_the_batches_list_updates_live(site: LiveSite, keys: Keys, browser: WebDriver, acme: Client) -> None:
    sign_in(browser, site, keys.acme)
    created = site.call(acme.create([_job(f"l-{i}", "fast-b") for i in range(12)], name="list.jsonl"))
    browser.get(f"{site.url}/ui/batches")
    row = f'#batches tr[data-batch-id="{created.batch_id}"]'
    assert text_of(browser, f"{row} td.progress") == "0/12"
    first = browser.find_elements(By.CSS_SELECTOR, "#batches tr[data-batch-id]")[0]
    assert first.get_attribute("data-batch-id") == created.batch_id  # newest first
    _mark(browser)
    site.call(acme.enqueue(created))

    wait_for(browser, lambda d: text_of(d, f"{row} td.status") == "completed", "the row to say completed")
    assert text_of(browser, f"{row} td.progress") == "12/12"
    assert _not_reloaded(browser)
    element(browser, f"{row} a.batch-link").click()
    assert text_of(browser, "#batch-status") == "completed"
    assert created.batch_id in browser.current_url


def test_cancelling_a_running_batch(site: LiveSite, keys: Keys, browser: WebDriver, acme: Client) -> None:
    sign_in(browser, site, keys.acme)
    created = _open_batch(browser, site, acme, [_job(f"c-{i}", "slow-f") for i in range(40)])
    wait_for(browser, lambda d: _count(d, "#count-completed") >= 1, "the first job to finish")
    # Without the session's CSRF token, the same POST is refused.
    action = element(browser, "#cancel-form").get_attribute("action") or ""
    forged = _fetch(browser, action, method="POST", body="", headers=_FORM)
    assert forged["status"] == 403
    assert text_of(browser, "#batch-status") == "in_progress"
    element(browser, "#cancel-batch").click()

    wait_for(browser, lambda d: text_of(d, "#batch-status") in {"cancelling", "cancelled"}, "the cancel")
    wait_for(browser, lambda d: text_of(d, "#batch-status") == "cancelled", "the running jobs to end")
    assert absent(browser, "#cancel-form")
    statuses, attempted = site.call(_cancelled(site, created.batch_id))
    assert statuses.get(JobStatus.CANCELLED, 0) >= 20  # most of 40 four-at-a-time 400 ms jobs
    assert sum(statuses.values()) == 40
    assert attempted == 0  # no cancelled job ever called a provider


async def _cancelled(site: LiveSite, batch_id: str) -> tuple[dict[JobStatus, int], int]:
    """The batch's jobs per status, and how many attempts its cancelled jobs made."""
    batch = await site.backend.store.batches.get(batch_id, tenant="acme")
    query = (
        select(func.count())
        .select_from(attempts.join(jobs, attempts.c.job_id == jobs.c.id))
        .where((jobs.c.batch_id == batch_id) & (jobs.c.status == JobStatus.CANCELLED.value))
    )
    async with site.backend.store.engine.connect() as conn:
        attempted = (await conn.execute(query)).scalar_one()
    return dict(batch.counts), int(attempted)


def _force(browser: WebDriver, dep: str, state: str) -> None:
    row = f'#providers tr[data-deployment="{dep}"]'
    Select(element(browser, f'{row} form.force-form select[name="state"]')).select_by_value(state)
    element(browser, f"{row} .force-submit").click()


def test_an_operator_forces_a_deployment_down_and_back(
    site: LiveSite, keys: Keys, browser: WebDriver
) -> None:
    sign_in(browser, site, keys.operator)
    browser.get(f"{site.url}/ui/providers")
    row = '#providers tr[data-deployment="smart-c"]'
    assert text_of(browser, f"{row} td.circuit") == "closed"
    assert text_of(browser, f"{row} td.simulated") == "simulated"
    try:
        _force(browser, "smart-c", "down")
        wait_for(browser, lambda d: "forced down" in text_of(d, f"{row} td.circuit"), "forced down")
        assert _providers(site, keys.operator)["smart-c"]["forced"] == "down"

        _force(browser, "smart-c", "auto")
        wait_for(browser, lambda d: text_of(d, f"{row} td.circuit") == "closed", "back to auto")
        assert _providers(site, keys.operator)["smart-c"]["forced"] is None
    finally:
        httpx2.post(
            f"{site.url}/v1/admin/deployments/smart-c/state",
            json={"state": "auto"},
            headers={"Authorization": f"Bearer {keys.operator}"},
            timeout=10,
        )


def test_a_tenant_sees_providers_but_cannot_force_them(
    site: LiveSite, keys: Keys, browser: WebDriver
) -> None:
    sign_in(browser, site, keys.acme)
    browser.get(f"{site.url}/ui/providers")
    for dep in _catalog():
        element(browser, f'#providers tr[data-deployment="{dep}"]')
    assert absent(browser, "form.force-form")

    token = browser.execute_script(
        "return document.querySelector('#logout-form input[name=csrf_token]').value;"
    )
    body = f"state=down&csrf_token={token}"
    refused = _fetch(browser, "/ui/providers/fast-b/force", method="POST", body=body, headers=_FORM)
    assert refused["status"] == 403
    assert _providers(site, keys.acme)["fast-b"]["forced"] is None


def test_another_tenants_batch_and_job_are_not_found(
    site: LiveSite, keys: Keys, browser: WebDriver, acme: Client
) -> None:
    created = site.call(acme.create([_job("secret", "fast-b")], name="acme-only.jsonl"))
    sign_in(browser, site, keys.other)
    for path in (f"/ui/batches/{created.batch_id}", f"/ui/jobs/{created.job_ids[0]}"):
        browser.get(f"{site.url}{path}")
        wait_for(browser, lambda d: "not found" in text_of(d, "body").lower(), f"{path}'s 404 page")
        assert absent(browser, "#batch-status")
        assert absent(browser, "#job-status")
        assert _fetch(browser, path)["status"] == 404
    assert "acme-only" not in text_of(browser, "body")


def test_a_job_page_shows_its_plan_and_attempts(
    site: LiveSite, keys: Keys, browser: WebDriver, acme: Client
) -> None:
    sign_in(browser, site, keys.acme)
    # shaky-e first: its first call fails (retried there); min_quality excludes cheap-a and flaky-d.
    job_id = site.call(acme.submit(_job("timeline", "shaky-e", preferences={"min_quality": 0.7}).request))
    site.call(acme.wait(job_id))
    browser.get(f"{site.url}/ui/jobs/{job_id}")

    assert text_of(browser, "#job-status") == "succeeded"
    assert "shaky-e" in text_of(browser, "#plan")
    exclusions = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#plan li.exclusion")]
    for dep in ("cheap-a", "flaky-d"):
        assert any(dep in text for text in exclusions), exclusions
    timeline = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#attempts li.attempt")]
    assert len(timeline) == 2, timeline
    assert ["shaky-e" in t for t in timeline] == [True, True]
    assert ["error" in timeline[0], "success" in timeline[1]] == [True, True]
    assert text_of(browser, "#job-cost")
    assert text_of(browser, "#answer")


def test_the_fleet_pages_show_their_figures(site: LiveSite, keys: Keys, browser: WebDriver) -> None:
    browser.get(f"{site.url}/")  # / leads to the dashboard
    wait_for(browser, lambda d: "/ui" in d.current_url, "the redirect from / to the dashboard")
    sign_in(browser, site, keys.operator)
    browser.get(f"{site.url}/ui/workers")
    # The site's worker runs in this process: its row names this pid.
    assert [str(os.getpid()) in cells for cells in _rows(browser, "#workers")] == [True]
    browser.get(f"{site.url}/ui/analytics")
    for figure in ("svg#cost-chart", "table#latency", "#failovers", "#cache", "#quality"):
        element(browser, figure)
    browser.get(f"{site.url}/ui/budgets")
    element(browser, "table#budgets")
