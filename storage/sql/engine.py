"""Engine creation and migrations for the SQL store (SQLite via aiosqlite, PostgreSQL via asyncpg).

Every `Store.open` migrates, but a database already at `SCHEMA_HEAD` is left alone without
importing alembic (with mako and pygments, about a tenth of a second): `routeq status` opens the
store once per process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json, to_json
from sqlalchemy import Connection, Insert, Table, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InvalidRequestError, NoSuchModuleError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from storage.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "JSON_CODEC",
    "MIGRATIONS_DIR",
    "SCHEMA_HEAD",
    "alembic_config",
    "connect_database",
    "insert_ignoring",
    "is_single_connection",
    "is_sqlite",
    "migrate",
    "sqlite_pragmas",
]

logger = logging.getLogger("routeq.storage")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest revision in migrations/versions; a new migration moves it (a test compares the two).
SCHEMA_HEAD = "0023"
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_ID = 0x726F75746571
_HINT = (
    "Check ROUTEQ_DATABASE_URL (sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db) "
    "and that the database server is running."
)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def is_single_connection(engine: AsyncEngine) -> bool:
    """True for in-memory SQLite: every user shares one connection, so access must take turns."""
    return isinstance(engine.pool, StaticPool)


def insert_ignoring(dialect: str, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING into `table`, for a `dialect` named as SQLAlchemy names it."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (status, results, the progress bar) run while a worker writes; the busy
    # timeout makes a second writer process wait instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine for `url`; SQLite files get WAL mode and a busy timeout."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ServiceUnavailableError("the database", url, "not a database URL", _HINT) from exc
    try:
        return _engine(parsed, echo=echo)
    except (NoSuchModuleError, InvalidRequestError, ImportError) as exc:
        # An unknown scheme (`nonsense://`) or a driver that is not async (`postgresql://`).
        reason = f"no async driver for {parsed.drivername!r} ({exc})"
        raise ServiceUnavailableError("the database", url, reason, _HINT) from exc


_SQLITE_POOL = 32


def _json_text(value: Any) -> str:
    """A JSON column's text, written by pydantic-core: about four times as fast as `json.dumps`,
    which took a few percent of a worker's CPU (a job writes its result, attempts and plan)."""
    return to_json(value).decode()


# Every engine reads and writes JSON columns with pydantic-core (`from_json` reads what json wrote).
JSON_CODEC: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": from_json}


def _engine(parsed: URL, *, echo: bool) -> AsyncEngine:
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        # aiosqlite (the only async SQLite driver here) through one thread hop a statement. Imported
        # here: SQLAlchemy's SQLite dialect and aiosqlite cost a PostgreSQL process 14 ms at start.
        from storage.sql.sqlite_driver import one_hop_dbapi  # noqa: PLC0415

        driver = {"module": one_hop_dbapi()} if parsed.get_driver_name() == "aiosqlite" else {}
        if not database or database == ":memory:":
            # One in-memory database lives on one connection: share it (fast tests, throwaway runs).
            engine = create_async_engine(parsed, echo=echo, **JSON_CODEC, **driver, poolclass=StaticPool)
            event.listen(engine.sync_engine, "connect", sqlite_pragmas)
            return engine
        if not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Every connection is a thread of aiosqlite's: a pool as large as a busy worker's concurrent
        # reads keeps them, where the default (5) opened and closed one thread per overflowing read.
        engine = create_async_engine(
            parsed, echo=echo, **JSON_CODEC, **driver, pool_size=_SQLITE_POOL, max_overflow=_SQLITE_POOL
        )
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        return engine
    return create_async_engine(
        parsed, echo=echo, **JSON_CODEC, pool_size=10, max_overflow=20, pool_recycle=1800
    )


async def connect_database(url: str, *, run_migrations: bool = True) -> AsyncEngine:
    """Create the engine, check the database answers and (by default) bring its schema to head.

    Raises:
        ServiceUnavailableError: the database cannot be reached; the message names the URL.
    """
    engine = create_engine(url)
    try:
        if run_migrations:
            await migrate(engine)
        else:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except (OperationalError, DBAPIError, OSError) as exc:
        await engine.dispose()
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        raise ServiceUnavailableError("the database", url, cause, _HINT) from exc
    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration pointing at routeq's migrations (no alembic.ini needed)."""
    from alembic.config import Config  # noqa: PLC0415 - alembic loads only when a migration may run

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _at_head(connection: Connection) -> bool:
    if not inspect(connection).has_table("alembic_version"):
        return False
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == SCHEMA_HEAD


def _upgrade(connection: Connection, *, per_migration: bool = False) -> None:
    """Run the migrations a database not at `SCHEMA_HEAD` lacks. `per_migration`: each in a
    transaction alembic begins and commits itself (env.py `transaction_per_migration`) instead of
    the caller's, so that one may run outside any: PostgreSQL builds an index on a table in use
    without blocking its writes only so (`CREATE INDEX CONCURRENTLY`)."""
    at_head = _at_head(connection)
    if per_migration:
        connection.commit()  # the read's transaction ends: alembic's context begins its own
    if at_head:
        return
    from alembic import command  # noqa: PLC0415 - alembic loads only when a migration may run

    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Upgrade the schema to the newest migration. Safe to call from many processes at once."""
    if engine.dialect.name != "postgresql":
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
        logger.debug("database schema is at head")
        return
    async with engine.connect() as conn:
        # Workers starting together would otherwise race to create the same tables. The lock is the
        # session's, held across the migrations' own transactions until it is released here (or the
        # connection closes with its process).
        await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        await conn.commit()
        try:
            await conn.run_sync(_upgrade, per_migration=True)
        finally:
            await conn.rollback()
            await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
            await conn.commit()
    logger.debug("database schema is at head")
