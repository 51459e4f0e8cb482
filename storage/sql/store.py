"""The SQL store: one engine and one group committer, and a room per family of tables.

    store.batches    create a batch and its jobs, cancel, read, summarise      (sql/batches.py)
    store.jobs       read jobs and their attempts                                (sql/jobs.py)
    store.runs       a worker's start, finish, defer, in-doubt calls             (sql/runs.py)
    store.ledger     read the cost ledger                                        (sql/ledger.py)
    store.files      Batch API files                                             (sql/files.py)
    store.api_keys   the HTTP API's keys                                         (sql/api_keys.py)
    store.idempotency  the batch an Idempotency-Key's first request made          (sql/idempotency.py)
    store.cache      cached answers (jobs by request hash), tenants' cache policies, stats (sql/cache.py)
    store.quality    scored answers (judges, reference sets, feedback) and their tallies (sql/quality.py)
    store.evals      answered jobs to sample for judging, reference-set runs and scores (sql/evals.py)
    store.webhooks   webhook endpoints, the outbox's deliveries and attempts       (sql/webhooks.py)
    store.catalog    the live catalog's versions, append-only                       (sql/catalog.py)

Every write goes through the group committer (`storage/sql/group_commit.py`): writes of concurrent
jobs share a transaction, and each write begins with a write statement (SQLite then takes its lock
up front and never has to upgrade a read lock).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.sql.api_keys import ApiKeys
from storage.sql.batches import Batches
from storage.sql.cache import ResponseCache
from storage.sql.catalog import CatalogVersions
from storage.sql.database import Database, utcnow
from storage.sql.engine import connect_database
from storage.sql.evals import Evals
from storage.sql.files import Files
from storage.sql.idempotency import IdempotencyKeys
from storage.sql.jobs import Jobs
from storage.sql.ledger import Ledger
from storage.sql.quality import QualityEvidence
from storage.sql.runs import Runs
from storage.sql.webhooks import Webhooks

__all__ = ["Store"]


class Store:
    """Async access to routeq's SQL tables. Open with `Store.open(url)`, close with `close()`."""

    def __init__(self, engine: AsyncEngine, *, now: Callable[[], datetime] = utcnow) -> None:
        self.db = Database(engine, now=now)
        self.jobs = Jobs(self.db)
        self.ledger = Ledger(self.db)
        self.runs = Runs(self.db, self.jobs)
        self.idempotency = IdempotencyKeys(self.db)
        self.batches = Batches(self.db, self.jobs, self.ledger, self.idempotency)
        self.files = Files(self.db)
        self.api_keys = ApiKeys(self.db)
        self.cache = ResponseCache(self.db)
        self.quality = QualityEvidence(self.db)
        self.evals = Evals(self.db)
        self.webhooks = Webhooks(self.db)
        self.catalog = CatalogVersions(self.db)

    @classmethod
    async def open(cls, url: str, *, run_migrations: bool = True) -> Store:
        """Connect (raising `ServiceUnavailableError` with the URL) and migrate to the newest schema."""
        return cls(await connect_database(url, run_migrations=run_migrations))

    @property
    def engine(self) -> AsyncEngine:
        return self.db.engine

    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reads (it waits its turn on an in-memory SQLite's one connection)."""
        return self.db.reading()

    async def close(self) -> None:
        await self.db.close()
