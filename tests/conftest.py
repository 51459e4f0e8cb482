"""Shared fixtures: a small catalog whose right answers are known, and a router on the in-process sim."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from router_core import Catalog, FakeClock, Router, RouterSettings, SimulateMode
from router_core.catalog import parse_catalog
from storage.logs import CONFIGURED_LOGGERS, HANDLER_NAME
from tests._xdist import isolate_worker

if TYPE_CHECKING:
    from tests.backends import Backend

# The response cache is on by default (ROUTEQ_CACHE). The suites that test routing, failover, limits
# and budgets send the same prompt many times and count the calls it makes, so they run with it off;
# tests/test_cache*.py turn it on where they test it. Subprocesses (CLI, workers) inherit this.
os.environ.setdefault("ROUTEQ_CACHE", "false")
# `routeq worker`, `serve` and `run` freeze what start-up left alive (storage/logs.py): in this
# process, where tests run `routeq run` one after another, each would freeze the last one's fixtures
# for good and pay a full collection. tests/test_gc.py tests the tuning itself.
os.environ.setdefault("ROUTEQ_GC_THRESHOLD", "0")
isolate_worker()  # under pytest-xdist: a Redis and a PostgreSQL database per worker


@pytest.fixture(autouse=True)
def _process_logging_undone() -> Iterator[None]:
    """`routeq run`, `worker` and `serve` under test configure logging for their whole process
    (storage.logs.configure_logging: a handler on the root logger writing to the runner's stderr,
    levels and filters of routeq's, arq's and uvicorn's loggers). Undo that after each test.
    pytest's own handlers on the root logger are its business: they are never touched here."""
    root = logging.getLogger()
    root_level = root.level
    saved = [
        (logger, logger.level, logger.handlers[:], logger.filters[:], logger.propagate)
        for logger in map(logging.getLogger, CONFIGURED_LOGGERS)
    ]
    yield
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(root_level)
    for logger, level, handlers, filters, propagate in saved:
        logger.setLevel(level)
        logger.handlers[:], logger.filters[:], logger.propagate = handlers, filters, propagate


def deployment(id: str, **overrides: Any) -> dict[str, Any]:
    """A sim deployment with flat override prices, so costs are exact and known."""
    base: dict[str, Any] = {
        "id": id,
        "kind": "sim",
        "provider": id.split("-", maxsplit=1)[0],
        "model": f"{id}-model",
        "quality": 0.7,
        "latency_ms": 500,
        "context_window": 100_000,
        "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0},
    }
    base.update(overrides)
    return base


# cost order: cheap < fast < smart; speed: fast < cheap < smart; quality: smart > fast > cheap.
TRIO = [
    deployment("cheap-a", quality=0.6, latency_ms=900, price={"input_per_mtok": 0.1, "output_per_mtok": 0.4}),
    deployment("fast-b", quality=0.75, latency_ms=200, price={"input_per_mtok": 1.0, "output_per_mtok": 4.0}),
    deployment(
        "smart-c", quality=0.95, latency_ms=1500, price={"input_per_mtok": 10.0, "output_per_mtok": 40.0}
    ),
]


def make_catalog(deployments: list[dict[str, Any]]) -> Catalog:
    return parse_catalog({"deployments": deployments}, source="<test>")


@pytest.fixture
def trio() -> Catalog:
    return make_catalog(TRIO)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


RouterFactory = Callable[..., Router]


@pytest.fixture
async def make_router(clock: FakeClock) -> AsyncIterator[RouterFactory]:
    """Build routers on the in-process sim with a fake clock; all are closed after the test."""
    routers: list[Router] = []

    def factory(catalog: Catalog, **settings: Any) -> Router:
        router = Router.from_settings(
            RouterSettings(simulate=SimulateMode.ALWAYS, **settings),
            catalog=catalog,
            clock=clock,
            rng=random.Random(7),
        )
        routers.append(router)
        return router

    yield factory
    for router in routers:
        await router.aclose()


@pytest.fixture(params=["embedded", "services"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The pipeline on fakeredis + SQLite, and on real Redis + PostgreSQL (CI)."""
    from tests.backends import open_backend  # noqa: PLC0415 - backends imports this module's catalogs

    async with open_backend(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture(params=["embedded", "services"])
async def backend_on_file(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """`backend` on a database the CLI can open too (the embedded one's SQLite in a file)."""
    from tests.backends import open_backend  # noqa: PLC0415 - backends imports this module's catalogs

    async with open_backend(request.param, tmp_path, on_file=True) as opened:
        yield opened
