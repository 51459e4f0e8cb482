"""Drop `ix_jobs_batch_id_status`: `ix_jobs_batch_breakdown` begins with the same two columns.

Every query that read (batch_id, status) — a batch's counts per status, its queued jobs when it is
cancelled, its failed ones, whether it has open ones — is served by the breakdown index (migration
0018: batch_id, status, deployment, cost, latency, failovers), which covers the counts too. The
narrower index was one more B-tree for SQLite and PostgreSQL to change on every job's insert,
start and finish: on SQLite about 13 us of the writer thread's CPU a job (bench/throughput's
pipeline, the two UPDATEs of a job's run).

On PostgreSQL the index is dropped (and made again by the downgrade) CONCURRENTLY, outside a
transaction, so that the workers' writes go on meanwhile.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

_NAME = "ix_jobs_batch_id_status"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(_NAME, table_name="jobs")
        return
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_NAME}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(_NAME, "jobs", ["batch_id", "status"])
        return
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_NAME}")  # a build cut short leaves it invalid
        op.create_index(_NAME, "jobs", ["batch_id", "status"], postgresql_concurrently=True)
