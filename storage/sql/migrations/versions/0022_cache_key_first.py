"""The exact cache's index leads with the key: a batched lookup seeks each key on SQLite.

A worker looks up the keys of the jobs it starts together in one query (`cache_key IN (...)`).
With `ix_jobs_cached` on (tenant, cache_key, finished_at) SQLite, which keeps no statistics here,
judged a tenant to hold about ten rows and read the tenant's whole range of keys instead of seeking
each key asked: every lookup's work grew with the answers stored (about twelve VM steps per stored
answer, each lookup). With the key first it seeks each key (`cache_key=? AND tenant=? AND
finished_at>?`); PostgreSQL uses the index either way.

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
    op.drop_index("ix_jobs_cached", table_name="jobs")
    where = sa.text(_SOURCES)
    op.create_index("ix_jobs_cached", "jobs", columns, postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    _index(["cache_key", "tenant", "finished_at"])


def downgrade() -> None:
    _index(["tenant", "cache_key", "finished_at"])
