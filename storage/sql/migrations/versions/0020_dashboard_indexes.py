"""Indexes for the web dashboard's batch page: a batch's jobs per status and deployment, its charges.

- `ix_jobs_batch_breakdown`: a batch's jobs by status and deployment, with their cost, latency and
  failovers: the counts and the per-deployment table of a 100,000-job batch come from one scan of
  the index alone (key columns rather than INCLUDE, so that SQLite's index covers it too).
- `ix_ledger_batch_id`: a batch's ledger rows (with their cost on PostgreSQL), for `Ledger.billed`,
  which read the whole ledger before.

Revision ID: 0020
Revises: 0014
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_batch_breakdown",
        "jobs",
        ["batch_id", "status", "deployment", "cost_usd", "latency_ms", "failovers"],
    )
    op.create_index("ix_ledger_batch_id", "ledger", ["batch_id"], postgresql_include=["cost_usd"])


def downgrade() -> None:
    op.drop_index("ix_ledger_batch_id", table_name="ledger")
    op.drop_index("ix_jobs_batch_breakdown", table_name="jobs")
