"""SQLAlchemy's aiosqlite adapter, one thread hop per statement.

aiosqlite runs every call on its connection's thread: the caller queues a function, the thread runs
it and wakes the event loop with the result. SQLAlchemy's adapter makes four such calls for a
statement that returns rows (open a cursor, execute, fetch all, close) and three for one that does
not, and one more when a connection goes back to the pool (a rollback, even after a read that
opened no transaction). Each hop is two thread switches and an event-loop wake-up: a worker running
one job at a time made about 30 a job, and they were most of its SQL CPU.

Here a statement is one hop: the thread opens a cursor, executes, fetches every row (when the
statement returns any), notes the row count, last row id and whether a transaction is open, and
closes the cursor. A rollback with no transaction open is skipped: SQLite (its driver's default,
implicit transactions) opens one only for a write, so after reads there is nothing to roll back.
Everything else (connecting, commits, errors, server-side cursors) is SQLAlchemy's own.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

__all__ = ["one_hop_dbapi"]

# What a statement's hop hands back: description, rows (None: it returns none), row count, last
# row id, and whether its connection is in a transaction after it.
_Done = tuple[Any, list[Any] | None, int, int | None, bool]


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Done:
    """One statement on aiosqlite's thread, its cursor opened and closed there."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description and not many else None
        return description, rows, cursor.rowcount, cursor.lastrowid, conn.in_transaction
    finally:
        cursor.close()


class _Cursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statements are one hop each; nothing to open or close on the thread."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:  # no cursor opened: `_run` opens one
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]  # None before an INSERT, as sqlite3's

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._hop(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Sequence[Any]) -> None:
        await self._hop(operation, seq_of_parameters, many=True)

    async def _hop(self, operation: Any, parameters: Any, *, many: bool) -> None:
        adapted: _Connection = self._adapt_connection  # type: ignore[assignment]
        async with adapted._execute_mutex:
            adapted.in_transaction = None  # unknown until the statement says (it may fail)
            conn = self._connection
            done = await conn._execute(_run, conn._conn, operation, parameters, many)
            self._description, rows, self._rowcount, self._lastrowid, adapted.in_transaction = done
            self._rows = collections.deque(rows or ())

    async def _async_soft_close(self) -> None:
        return  # the rows are here already; the cursor was closed on the thread

    def close(self) -> None:
        self._rows.clear()


class _Connection(AsyncAdapt_aiosqlite_connection):
    """The aiosqlite connection adapter with `_Cursor`s, skipping a rollback of no transaction."""

    __slots__ = ("in_transaction",)

    _cursor_cls = _Cursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.in_transaction: bool | None = None  # unknown: a rollback then goes to the thread

    def rollback(self) -> None:
        if self.in_transaction is False:
            return
        super().rollback()
        self.in_transaction = False

    def commit(self) -> None:
        super().commit()
        self.in_transaction = False


class _Dbapi(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI shim, connecting with `_Connection`."""

    def connect(self, *arg: Any, **kw: Any) -> _Connection:
        creator_fn = kw.pop("async_creator_fn", None)
        if creator_fn:
            connection = creator_fn(*arg, **kw)
        else:
            connection = self.aiosqlite.connect(*arg, **kw)
            connection._thread.daemon = True  # as SQLAlchemy's: a thread never holds up exit
        return _Connection(self, await_(connection))


def one_hop_dbapi() -> ModuleType:
    """The DBAPI module to give `create_async_engine(..., module=)` for `sqlite+aiosqlite` URLs."""
    return _Dbapi(aiosqlite, sqlite3)  # type: ignore[return-value]
