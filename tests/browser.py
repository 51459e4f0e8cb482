"""The dashboard in a real browser, for tests: Debian's headless Chromium driven by Selenium, against
the API and a live worker on real Redis + PostgreSQL.

Selenium's calls block, so the site cannot share the test's thread and event loop: `LiveSite` runs
uvicorn (`create_app`), an arq worker and the store on an event loop of its own, in a thread, and a
test hands that loop coroutines (`site.call(...)`) to reach the store, Redis or a `Client`. The
worker calls the in-process sim world, whose deployments answer after the latency the catalog gives
them, so a batch is visibly running for a moment.

No browser is ever downloaded: Selenium gets the paths of `/usr/bin/chromium` and
`/usr/bin/chromedriver` (packages `chromium` and `chromium-driver`, which `.ci/run` installs), and
Selenium Manager is told to stay offline. Under CI=true a missing browser fails the tests.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from producer.client import Client
from router_core.catalog import Catalog
from tests.api_harness import LiveApi, serve_api
from tests.backends import DATABASE_ENV, REDIS_ENV, Backend, open_backend, service_url

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = "1280,1000"
# Long enough for a batch of a few seconds, short enough that a broken page fails fast.
WAIT_S = 15.0
_POLL_S = 0.05


def require_browser() -> None:
    """Skip without Debian's chromium + chromium-driver; under CI=true fail instead."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; the browser tests may not be skipped in CI")
    pytest.skip(message)


def open_chromium() -> WebDriver:
    """A headless Chromium from the system's packages (never Selenium Manager's download)."""
    require_browser()
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, were it ever asked, must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root in a container
        "--disable-dev-shm-usage",  # containers' /dev/shm is small
        f"--window-size={WINDOW}",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


class LiveSite:
    """The API (and the dashboard it serves) with a live worker, on a loop in a thread of its own.

    `start()` returns once uvicorn listens; `url` is its base URL (127.0.0.1, a free port). The
    services backend is used: its tables are emptied and its Redis database flushed on start.
    """

    def __init__(self, tmp_path: Path, catalog: Catalog, **settings: Any) -> None:
        self._tmp_path = tmp_path
        self._catalog = catalog
        self._settings = settings
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None  # made by `start`, once the services are there
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._api: LiveApi | None = None
        self._clients: list[Client] = []

    @property
    def api(self) -> LiveApi:
        assert self._api is not None, "the site is not started"
        return self._api

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def backend(self) -> Backend:
        return self.api.backend

    def start(self) -> None:
        # The services' URLs are checked here, where a skip or a failure reaches pytest.
        service_url(REDIS_ENV)
        service_url(DATABASE_ENV)
        # The coroutine is made only now: one made before a skip above was never awaited, and its
        # warning, raised when it was collected, failed whichever test was running then.
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), name="live-site", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the live site did not start within 60 s")
        if self._error is not None:
            raise RuntimeError("the live site failed to start") from self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is None:
            return
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError("the live site did not stop within 30 s")

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT_S) -> T:
        """Run `coro` on the site's loop (where its store and Redis live) and return its result."""
        assert self._loop is not None, "the site is not started"
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    def key(self, tenant: str, user: str = "u1", *, operator: bool = False) -> str:
        """A new API key's secret."""
        return self.call(self.api.key(tenant, user, operator=operator))

    def client(self, tenant: str, user: str = "u1") -> Client:
        """A producer `Client` for `tenant` on the site's store and a Redis connection of its own; its
        coroutines run through `call`. Closed when the site stops."""
        return self.call(self._client(tenant, user))

    async def _client(self, tenant: str, user: str) -> Client:
        client = Client(
            await self.backend.redis(), self.backend.store, self.backend.settings, tenant=tenant, user=user
        )
        self._clients.append(client)
        return client

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with (
                open_backend("services", self._tmp_path) as backend,
                serve_api(backend, catalog=self._catalog, **self._settings) as api,
            ):
                self._api = api
                self._ready.set()
                try:
                    await self._stop.wait()
                finally:
                    for client in self._clients:
                        await client.close()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ready.set()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T], what: str, timeout: float = WAIT_S) -> T:
    """Wait until `condition(driver)` is truthy and return it; the failure says what was awaited.

    An element that went stale (the page was replaced while it was read) is read again: Chromium
    reports some of those as an "unknown error" about a node that no longer belongs to the document.
    """

    def checked(d: WebDriver) -> T:
        try:
            return condition(d)
        except WebDriverException as exc:
            if _DETACHED in (exc.msg or ""):
                raise StaleElementReferenceException(exc.msg) from exc
            raise

    waiting = WebDriverWait(
        driver, timeout, poll_frequency=_POLL_S, ignored_exceptions=(StaleElementReferenceException,)
    )
    return waiting.until(checked, f"waited for {what}")


_DETACHED = "does not belong to the document"


def element(driver: WebDriver, css: str) -> WebElement:
    """The first element `css` selects, waiting until there is one."""
    found: list[WebElement] = wait_for(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, css), f"element {css!r} on {driver.current_url}"
    )
    return found[0]


def text_of(driver: WebDriver, css: str) -> str:
    """The visible text of the first element `css` selects, stripped (waits until there is one)."""

    def read(d: WebDriver) -> list[str]:  # a list, so that an empty text is still found
        found = d.find_elements(By.CSS_SELECTOR, css)
        return [found[0].text.strip()] if found else []

    return wait_for(driver, read, f"element {css!r} on {driver.current_url}")[0]


def absent(driver: WebDriver, css: str) -> bool:
    return not driver.find_elements(By.CSS_SELECTOR, css)
