"""SQLite's writer thread: a group commit's whole transaction in one call to a thread of its own.

Through SQLAlchemy's asyncio layer every statement is a trip to aiosqlite's thread and back, each
wrapped in greenlet switches: a group of six small INSERTs and its commit cost 2.2-2.4 ms of CPU on
the development machine (2 vCPUs), the same transaction run by synchronous SQLAlchemy on one thread
0.76-0.88 ms (`bench/sql_writes.py`, both in one run).

`WriterThread` is that thread: a synchronous engine on the same database file (the standard
library's sqlite3 driver, the same dialect, PRAGMAs and JSON codec as the async engine, and a larger
page cache with fewer checkpoints: `_writer_pragmas`), used only from one thread of its own. The
group committer hands it a group made only of synchronous writes (`GroupCommitter.run_sync`,
`run_sync_batched`); the thread begins, runs them in turn and commits.
Only file databases get one: an in-memory database lives on the async engine's single connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.sql.engine import JSON_CODEC, is_single_connection, sqlite_pragmas

__all__ = ["WriterThread", "has_writer_thread"]

T = TypeVar("T")


def has_writer_thread(engine: AsyncEngine) -> bool:
    """True for a SQLite file: its writes can run on a thread of their own (in-memory SQLite lives
    on the async engine's one connection, PostgreSQL has no driver thread to save trips to)."""
    return engine.dialect.name == "sqlite" and not is_single_connection(engine)


# The writer's own connection keeps more pages and checkpoints less often than SQLite's defaults
# (2 MiB of cache, a checkpoint each 1,000 WAL pages): a group's index and table pages stay cached
# from one group to the next, and a page written by many groups is copied into the database once
# per checkpoint instead of once per few groups. bench/ab.py, 4,000 jobs a run: 0.94 and 0.96 of
# the CPU a job in process (4 of 4 and 3 of 4 pairs lower), 0.986 over HTTP (4 of 5). The cost:
# up to 64 MiB of memory in the process that writes, and a WAL file of up to about 80 MB.
_WRITER_CACHE_KIB = 65_536
_WRITER_CHECKPOINT_PAGES = 20_000


def _writer_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
    cursor.execute(f"PRAGMA wal_autocheckpoint={_WRITER_CHECKPOINT_PAGES}")
    cursor.close()


class WriterThread:
    """Transactions on `engine`'s SQLite file, each run whole on one thread by synchronous SQLAlchemy."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._url = engine.url.set(drivername="sqlite")  # the standard library's sqlite3
        self._engine: Engine | None = None  # made at first use: a process that only reads never pays
        self._made = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routeq-sql-writer")

    @property
    def engine(self) -> Engine:
        """The synchronous engine the thread writes with (made on first use)."""
        with self._made:
            if self._engine is None:
                # One connection, made and used on the thread (check_same_thread off only so that
                # dispose, also run there, may close it whatever thread Python's pool thinks owns it).
                self._engine = create_engine(
                    self._url,
                    **JSON_CODEC,
                    pool_size=1,
                    max_overflow=0,
                    connect_args={"check_same_thread": False},
                )
                event.listen(self._engine, "connect", sqlite_pragmas)
                event.listen(self._engine, "connect", _writer_pragmas)
            return self._engine

    async def transaction(self, write: Callable[[Connection], T]) -> T:
        """`write(connection)` in one transaction on the thread, committed unless it raised.

        Cancelled meanwhile, it still waits for the thread to finish before raising: the caller is
        then never told "cancelled" while its transaction is still open on the thread."""
        done = asyncio.get_running_loop().run_in_executor(self._executor, self._run, write)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            await asyncio.wait([done])
            raise

    def _run(self, write: Callable[[Connection], T]) -> T:
        with self.engine.begin() as conn:
            return write(conn)

    async def close(self) -> None:
        """Close the connection (on its thread) and stop the thread."""
        if self._engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._engine.dispose)
        self._executor.shutdown(wait=True)
