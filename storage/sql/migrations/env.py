"""Alembic environment: runs on the connection `storage.sql.engine.migrate` hands over.

Run from the alembic command line (e.g. `alembic revision --autogenerate`), it connects to
`ROUTEQ_DATABASE_URL` itself.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from storage.settings import Settings
from storage.sql.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs ALTER via table copies
        # Outside a transaction of the caller's (PostgreSQL: storage.sql.engine.migrate; the
        # command line), a transaction per migration, so that one may leave it
        # (`autocommit_block`); inside one (SQLite's migrate), the caller's holds them all.
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    from storage.sql.engine import create_engine  # noqa: PLC0415 - only the command line path needs it

    engine = create_engine(Settings().database_url)
    async with engine.connect() as conn:  # no transaction of ours: alembic's, one per migration
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_standalone())
