"""Pipeline backends for tests: embedded (fakeredis + SQLite file) and services (real Redis + PostgreSQL).

The services backend runs when ROUTEQ_TEST_REDIS_URL / ROUTEQ_TEST_DATABASE_URL are set; under
CI=true a missing variable is an error, not a skip, so CI can never silently test less.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from fakeredis import FakeServer
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from router_core import SimulateMode
from router_core.catalog import Catalog
from router_core.providers import sim_world_for
from router_core.sim.world import SimWorld
from storage.connections import connect_redis, embedded_redis
from storage.settings import Settings
from storage.sql.engine import create_engine
from storage.sql.schema import truncate_all
from storage.sql.store import Store
from tests.conftest import TRIO, make_catalog
from workers.context import Shared
from workers.worker import ContextHook, build_worker

REDIS_ENV = "ROUTEQ_TEST_REDIS_URL"
# Every table a test may fill: a services test starts from empty ones (the test databases are shared).
TRUNCATE_ALL = truncate_all()
DATABASE_ENV = "ROUTEQ_TEST_DATABASE_URL"


def service_url(env: str) -> str:
    """The URL in `env`, or skip (fail under CI=true) when it is not set."""
    url = os.environ.get(env, "").strip()
    if url:
        return url
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{env} must be set in CI: the services backend may not be skipped")
    pytest.skip(f"{env} not set: real-service tests skipped locally")


@asynccontextmanager
async def store_beside(redis_kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    """The store a test of Redis-side code pairs with its Redis: PostgreSQL (emptied) beside a real
    Redis (`redis_kind` "redis"), a SQLite file beside fakeredis."""
    if redis_kind == "redis":
        store = await Store.open(service_url(DATABASE_ENV))
        async with store.engine.begin() as conn:
            await conn.execute(TRUNCATE_ALL)
    else:
        store = await Store.open("sqlite+aiosqlite:///" + str(tmp_path / "t.db"))
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def sqlite_file_engine(path: Path, ddl: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the SQLite file `path`, made as routeq makes one, with `ddl` run first;
    disposed at the end."""
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text(ddl))
        yield engine
    finally:
        await engine.dispose()


@contextmanager
def sql_statements(store: Store) -> Iterator[list[str]]:
    """The SQL statements `store` runs inside the block, in order."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    # A SQLite file's plain writes run on the writer thread's engine (storage/sql/writer.py).
    engines = [store.engine.sync_engine, *([] if store.db.writer is None else [store.db.writer.engine])]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


@dataclass
class Backend:
    """One place the pipeline runs: settings plus factories for Redis connections and the store."""

    name: str
    settings: Settings
    store: Store
    fake_server: FakeServer | None = None
    _redis: list[ArqRedis] = field(default_factory=list)

    async def redis(self) -> ArqRedis:
        """A new Redis connection (a new pool), closed at the end of the test."""
        if self.fake_server is not None:
            conn = embedded_redis(self.settings, self.fake_server)
        else:
            conn = await connect_redis(self.settings)
        self._redis.append(conn)
        return conn

    async def run_worker(
        self,
        *,
        catalog: Catalog | None = None,
        sim_world: SimWorld | None = None,
        poll_delay: float = 0.01,
        max_jobs: int | None = None,
        max_burst_jobs: int = -1,
        before_shutdown: ContextHook | None = None,
        now: Callable[[], float] | None = None,
    ) -> int:
        """Run a burst-mode worker on this backend's store until the queue is empty; returns jobs done."""
        redis = await self.redis()
        # The known-answer trio on a 0 ms sim unless a test brings its own catalog and world.
        if catalog is None:
            catalog = make_catalog(TRIO)
            sim_world = sim_world_for(catalog)
        worker = build_worker(
            self.settings,
            redis=redis,
            shared=Shared(store=self.store, catalog=catalog, sim_world=sim_world, now=now),
            burst=True,
            max_burst_jobs=max_burst_jobs,
            handle_signals=False,
            poll_delay=poll_delay,
            max_jobs=max_jobs,
            before_shutdown=before_shutdown,
        )
        try:
            await worker.main()
        finally:
            await worker.close()
        return worker.jobs_complete

    async def aclose(self) -> None:
        for conn in self._redis:
            await conn.aclose()
        await self.store.close()


def pipeline_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "simulate": SimulateMode.ALWAYS,
        "queue_name": f"routeq:test:{uuid.uuid4().hex[:8]}",
        "worker_concurrency": 50,
        "backoff_base_s": 0.0,
        "backoff_max_s": 0.0,
        "worker_metrics_port": None,  # no test worker binds the default port; tests/test_metrics.py uses 0
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@asynccontextmanager
async def open_backend(
    name: str, tmp_path: Path, *, on_file: bool = False, **overrides: Any
) -> AsyncIterator[Backend]:
    """The backend `name`; `on_file`: the embedded one's SQLite in a file under `tmp_path`
    (routeq.db), which the CLI or another process can open too (PostgreSQL always can)."""
    if name == "embedded":
        # In-memory SQLite unless on a file (or the test names its own database).
        database = f"sqlite+aiosqlite:///{tmp_path / 'routeq.db'}" if on_file else "sqlite+aiosqlite://"
        settings = pipeline_settings(**{"redis_url": None, "database_url": database, **overrides})
        backend = Backend(name, settings, await Store.open(settings.database_url), fake_server=FakeServer())
    else:
        settings = pipeline_settings(
            redis_url=service_url(REDIS_ENV), database_url=service_url(DATABASE_ENV), **overrides
        )
        store = await Store.open(settings.database_url)
        async with store.engine.begin() as conn:
            await conn.execute(TRUNCATE_ALL)
        backend = Backend(name, settings, store)
        await (await backend.redis()).flushdb()
    try:
        yield backend
    finally:
        await backend.aclose()
