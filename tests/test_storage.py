"""The SQL store on its own: migrations match the tables, and each backend enforces the keys."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from storage.db import migrate
from storage.tables import metadata
from tests.backends import Backend


def _diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


async def test_migrations_create_exactly_the_declared_schema(backend: Backend) -> None:
    async with backend.store.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"batches", "jobs", "attempts", "ledger", "alembic_version"} <= tables


async def test_migrating_again_is_a_no_op(backend: Backend) -> None:
    await migrate(backend.store.engine)
    await migrate(backend.store.engine)
    async with backend.store.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    from tests.backends import open_backend  # noqa: PLC0415

    async with open_backend("embedded", tmp_path) as backend, backend.store.engine.connect() as conn:
        mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
    assert mode == "wal"
