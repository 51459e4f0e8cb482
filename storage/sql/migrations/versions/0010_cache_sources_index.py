"""The exact cache's index holds the answers providers gave, not the hits that reused them.

`ix_jobs_cached` (0009) covered every succeeded job with a key, hits included: a prompt served from
the cache ten thousand times had ten thousand index entries under its key, and every lookup walked
them (reading each row to skip the hits). A hit's answer is its source's, so only sources
(`cache_source IS NULL`) need to be found: the index now holds those only, and the age a TTL is
measured by is the age of the provider's answer.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_COLUMNS = ["tenant", "cache_key", "finished_at"]
_SOURCES = "cache_key IS NOT NULL AND status = 'succeeded' AND cache_source IS NULL"
_CACHED = "cache_key IS NOT NULL AND status = 'succeeded'"


def upgrade() -> None:
    op.drop_index("ix_jobs_cached", table_name="jobs")
    where = sa.text(_SOURCES)
    op.create_index("ix_jobs_cached", "jobs", _COLUMNS, postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    op.drop_index("ix_jobs_cached", table_name="jobs")
    where = sa.text(_CACHED)
    op.create_index("ix_jobs_cached", "jobs", _COLUMNS, postgresql_where=where, sqlite_where=where)
