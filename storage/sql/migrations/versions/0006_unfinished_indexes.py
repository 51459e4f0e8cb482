"""Partial indexes over unfinished jobs and batches, for the worker fleet's sweeper.

- `ix_jobs_unfinished`: `jobs (created_at) WHERE status IN ('queued', 'running')`: the sweeper's
  page of old unfinished jobs reads only the rows not yet finished, however many have finished.
- `ix_batches_unfinished`: `batches (created_at) WHERE completed_at IS NULL`: batches whose jobs
  may all be done without the batch having been marked complete.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_UNFINISHED_JOB = sa.text("status IN ('queued', 'running')")
_UNFINISHED_BATCH = sa.text("completed_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_jobs_unfinished",
        "jobs",
        ["created_at"],
        postgresql_where=_UNFINISHED_JOB,
        sqlite_where=_UNFINISHED_JOB,
    )
    op.create_index(
        "ix_batches_unfinished",
        "batches",
        ["created_at"],
        postgresql_where=_UNFINISHED_BATCH,
        sqlite_where=_UNFINISHED_BATCH,
    )


def downgrade() -> None:
    op.drop_index("ix_batches_unfinished", table_name="batches")
    op.drop_index("ix_jobs_unfinished", table_name="jobs")
