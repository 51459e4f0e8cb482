"""The exact cache's index leads with the key: a batched lookup seeks each key on SQLite.

A worker looks up the keys of the jobs it starts together in one query (`cache_key IN (...)`).
With `ix_jobs_cached` on (tenant, cache_key, finished_at) SQLite, which keeps no statistics here,
judged a tenant to hold about ten rows and read the tenant's whole range of keys instead of seeking
each key asked: every lookup's work grew with the answers stored (about twelve VM steps per stored
answer, each lookup). With the key first it seeks each key (`cache_key=? AND tenant=? AND
finished_at>?`); PostgreSQL uses the index either way.

On PostgreSQL the new index is built beside the old one with CREATE INDEX CONCURRENTLY, outside a
transaction, and then takes its name: a plain DROP + CREATE would keep the jobs table locked against
every worker's writes while the index of a large table is built.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

_SOURCES = "cache_key IS NOT NULL AND status = 'succeeded' AND cache_source IS NULL"


def _index(columns: list[str]) -> None:
    where = sa.text(_SOURCES)
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index("ix_jobs_cached", table_name="jobs")
        op.create_index("ix_jobs_cached", "jobs", columns, sqlite_where=where)
        return
    with op.get_context().autocommit_block():
        # IF EXISTS: a run cut short (a build that failed leaves an invalid index) may be run again.
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_cached_next")
        op.create_index(
            "ix_jobs_cached_next", "jobs", columns, postgresql_where=where, postgresql_concurrently=True
        )
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_cached")
        op.execute("ALTER INDEX ix_jobs_cached_next RENAME TO ix_jobs_cached")


def upgrade() -> None:
    _index(["cache_key", "tenant", "finished_at"])


def downgrade() -> None:
    _index(["tenant", "cache_key", "finished_at"])
