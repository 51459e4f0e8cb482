"""The dashboard (/ui) in headless Chromium, against the API and a live worker on real Redis + PostgreSQL.

One browser and one site serve the whole module (tests/browser.py). Each test signs in as the key
it needs and asserts on what the page shows; live updates are checked without reloading the page.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from producer.client import Client
from router_core.catalog import Catalog
from router_core.models import ChatRequest, Message
from storage.jobs import JobStatus, NewJob
from tests.browser import LiveSite, open_chromium, text_of, wait_for
from tests.conftest import TRIO, make_catalog

# Each sim deployment answers after its latency, so a batch of a few dozen jobs on a worker running
# four at a time is visibly live for a second or two.
LATENCY_MS = {"cheap-a": 120, "fast-b": 80, "smart-c": 160}


def _catalog() -> Catalog:
    return make_catalog([{**d, "sim": {"latency_ms": LATENCY_MS[d["id"]]}} for d in TRIO])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSite]:
    live = LiveSite(tmp_path_factory.mktemp("site"), _catalog(), worker_concurrency=4)
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def browser(site: LiveSite) -> Iterator[WebDriver]:
    driver = open_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def _jobs(n: int, prefix: str = "q") -> list[NewJob]:
    return [
        NewJob(
            f"{prefix}-{i}",
            ChatRequest(messages=[Message(role="user", content=f"Question {i}?")], max_tokens=20),
        )
        for i in range(n)
    ]


def test_the_live_site_runs_batches_and_the_browser_reaches_it(site: LiveSite, browser: WebDriver) -> None:
    client = site.client("acme")
    batch_id = site.call(client.submit_batch(_jobs(3)))
    done = site.call(_finished(client, batch_id))
    assert done == 3
    browser.get(f"{site.url}/health")
    assert wait_for(browser, lambda d: '"ok"' in text_of(d, "body"), "the health answer")


async def _finished(client: Client, batch_id: str) -> int:
    async for _ in client.events(batch_id):
        pass
    batch = await client.batch(batch_id)
    return batch.counts.get(JobStatus.SUCCEEDED, 0)
