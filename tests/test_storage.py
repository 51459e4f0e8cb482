"""The SQL store on its own: migrations match the tables, and each backend enforces the keys."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from router_core.models import ChatRequest, Message
from storage.errors import NotFoundError
from storage.jobs import ANY_TENANT, JobStatus, NewJob
from storage.sql.engine import SCHEMA_HEAD, alembic_config, create_engine, migrate
from storage.sql.schema import metadata
from storage.sql.store import Store
from tests.backends import DATABASE_ENV, Backend, service_url


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


def test_schema_head_names_the_newest_migration() -> None:
    # migrate() skips alembic for a database at SCHEMA_HEAD: a new migration must move it.
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_HEAD


async def test_a_database_behind_the_head_is_upgraded(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}", run_migrations=False)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0002"))
        await migrate(store.engine)
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            version = await conn.execute(text("SELECT version_num FROM alembic_version"))
            assert version.scalar() == SCHEMA_HEAD
    finally:
        await store.close()


async def _fresh_database(url: str, name: str, *, create: bool = True) -> None:
    """DROP (if there) and CREATE (unless not `create`) database `name` on the server of `url`."""
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415 - the services backend only

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def test_postgresql_rebuilds_the_cache_index_without_locking_the_jobs() -> None:
    """0021 -> head on PostgreSQL: the cache index is built CONCURRENTLY, outside a transaction,
    so the workers' writes go on meanwhile; a build cut short before (its index left) is redone."""
    url = make_url(service_url(DATABASE_ENV))
    fresh = url.set(database=f"{url.database}_upgrade")
    await _fresh_database(url.render_as_string(hide_password=False), fresh.database or "")
    engine = create_engine(fresh.render_as_string(hide_password=False))
    built: list[str] = []

    def seen(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("CREATE INDEX CONCURRENTLY"):
            isolation = conn.get_execution_options()["isolation_level"]
            built.append(f"{statement.split(' ON ', maxsplit=1)[0]} ({isolation})")

    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0021"))
            await conn.execute(text("CREATE INDEX ix_jobs_cached_next ON jobs (tenant)"))  # cut short
        event.listen(engine.sync_engine, "before_cursor_execute", seen)
        await migrate(engine)
        assert built == ["CREATE INDEX CONCURRENTLY ix_jobs_cached_next (AUTOCOMMIT)"]
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            assert (
                await conn.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar() == SCHEMA_HEAD
            names = await conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_jobs_cached%'")
            )
            assert names.scalars().all() == ["ix_jobs_cached"]
    finally:
        await engine.dispose()
        await _fresh_database(url.render_as_string(hide_password=False), fresh.database or "", create=False)


async def test_sqlite_file_runs_in_wal_mode(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'routeq.db'}")
    async with store.engine.connect() as conn:
        mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
        assert await conn.run_sync(_diff) == []
    await store.close()
    assert mode == "wal"


async def test_group_commit_shares_transactions_and_isolates_a_failing_write(tmp_path: Path) -> None:
    from sqlalchemy import text  # noqa: PLC0415

    from storage.sql.engine import create_engine  # noqa: PLC0415
    from storage.sql.group_commit import GroupCommitter  # noqa: PLC0415

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    committer = GroupCommitter(engine)

    def insert(k: int) -> Any:
        async def write(conn: AsyncConnection) -> int:
            await conn.execute(text("INSERT INTO t (k) VALUES (:k)"), {"k": k})
            return k

        return write

    assert await asyncio.gather(*(committer.run(insert(k)) for k in range(50))) == list(range(50))
    assert committer.groups < 5  # 50 concurrent writes shared a few transactions
    outcomes = await asyncio.gather(
        *(committer.run(insert(k)) for k in [*range(50, 75), 7, *range(75, 100)]), return_exceptions=True
    )
    await committer.close()

    assert [o for o in outcomes if isinstance(o, BaseException)] != []
    assert sum(isinstance(o, IntegrityError) for o in outcomes) == 1  # only the duplicate 7 failed
    assert sorted(o for o in outcomes if isinstance(o, int)) == list(range(50, 100))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 100
    await engine.dispose()


async def test_a_foreign_tenant_is_refused_by_the_store_itself(backend: Backend) -> None:
    """Reads of jobs and batches take a tenant: another tenant's id is "not found", like an unknown one."""
    store = backend.store
    request = ChatRequest(messages=[Message(role="user", content="hi")])
    created = await store.batches.create([NewJob("q1", request)], tenant="acme", user_id="u1")
    batch_id, job_id = created.batch_id, created.job_ids[0]

    with pytest.raises(NotFoundError) as foreign_job:
        await store.jobs.get(job_id, tenant="globex")
    with pytest.raises(NotFoundError) as unknown_job:
        await store.jobs.get("job_000000000000000000000000", tenant="globex")
    assert str(foreign_job.value) == str(unknown_job.value).replace("job_000000000000000000000000", job_id)
    with pytest.raises(NotFoundError):
        await store.batches.get(batch_id, tenant="globex")
    with pytest.raises(NotFoundError):
        await store.batches.cancel(batch_id, tenant="globex")
    assert [j async for j in store.jobs.iter(batch_id, tenant="globex")] == []
    assert await store.jobs.page(batch_id, tenant="globex") == []
    assert await store.jobs.attempts(job_id, tenant="globex") == []
    assert await store.batches.list(tenant="globex") == []
    # The foreign cancel changed nothing; the owner and an operator (ANY_TENANT) still see the job.
    assert (await store.jobs.get(job_id, tenant="acme")).status is JobStatus.QUEUED
    assert (await store.jobs.get(job_id, tenant=ANY_TENANT)).tenant == "acme"
    assert (await store.batches.get(batch_id, tenant="acme")).total == 1
    assert [j.id async for j in store.jobs.iter(batch_id, tenant="acme")] == [job_id]


# Keys SQLite's JSON paths cannot name as written (quotes, backslashes, non-ASCII: JSON is stored
# ASCII-escaped) and keys that look like path syntax: each must match itself and nothing else.
ODD_KEYS = ["team", "te.am x", 'a"b', "a\\b", "", "ключ", "a'b", "$", "[0]", "a=b"]


async def test_a_jobs_user_and_metadata_are_columns_sql_filters_by(backend: Backend) -> None:
    store = backend.store

    def request(metadata: dict[str, str] | None, user: str | None = None) -> ChatRequest:
        return ChatRequest(messages=[Message(role="user", content="hi")], user=user, metadata=metadata)

    items = [
        NewJob(f"k{i}", request({key: 'v"ü', "all": "yes"}, f"user-{i}")) for i, key in enumerate(ODD_KEYS)
    ]
    items.append(NewJob("plain", request(None)))
    created = await store.batches.create(items, tenant="acme", user_id="u1")
    batch_id = created.batch_id

    first = await store.jobs.get(created.job_ids[0], tenant="acme")
    assert (first.end_user, first.metadata) == ("user-0", {"team": 'v"ü', "all": "yes"})
    plain = await store.jobs.get(created.job_ids[-1], tenant="acme")
    assert (plain.end_user, plain.metadata) == (None, None)
    async with store.engine.connect() as conn:  # no metadata is SQL NULL, not a JSON null
        nulls = await conn.execute(text("SELECT count(*) FROM jobs WHERE metadata IS NULL"))
        assert nulls.scalar() == 1

    for i, key in enumerate(ODD_KEYS):
        found = await store.jobs.page(batch_id, tenant="acme", metadata={key: 'v"ü', "all": "yes"})
        assert [job.custom_id for job in found] == [f"k{i}"], key
        assert [
            j.custom_id async for j in store.jobs.iter(batch_id, tenant="acme", metadata={key: 'v"ü'})
        ] == [f"k{i}"]
    assert len(await store.jobs.page(batch_id, tenant="acme", metadata={"all": "yes"})) == len(ODD_KEYS)
    assert await store.jobs.page(batch_id, tenant="acme", metadata={"all": "Yes"}) == []
    assert await store.jobs.page(batch_id, tenant="acme", metadata={"team": "v"}) == []
    assert await store.jobs.page(batch_id, tenant="globex", metadata={"all": "yes"}) == []
    assert len(await store.jobs.page(batch_id, tenant="acme", metadata={})) == len(items)


async def test_a_batchs_jobs_by_status_are_read_through_an_index(tmp_path: Path) -> None:
    """Counts per status, the queued jobs a cancel takes, the open ones: SQLite seeks them in
    ix_jobs_batch_breakdown (migration 0023 dropped the narrower (batch_id, status) index)."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'plans.db'}")
    queries = [
        "SELECT status, count(*) FROM jobs WHERE batch_id = 'b' GROUP BY status",
        "UPDATE jobs SET status = 'cancelled' WHERE batch_id = 'b' AND status = 'queued'",
        "SELECT id FROM jobs WHERE batch_id = 'b' AND status IN ('queued', 'running')",
    ]
    try:
        async with store.engine.connect() as conn:
            for query in queries:
                rows = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}")).all()
                plan = [str(row[-1]) for row in rows]  # (id, parent, notused, detail)
                assert any("INDEX ix_jobs_batch_breakdown (batch_id=?" in step for step in plan), (
                    query,
                    plan,
                )
    finally:
        await store.close()
