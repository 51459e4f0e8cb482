"""A job's end user and metadata, as columns SQL can group and filter by.

- `jobs.end_user`: the request's `user` (OpenAI's end-user id, set by the caller; not the API
  key's `user_id`). Indexed with the tenant and `finished_at`: analytics per end user over a window.
- `jobs.metadata`: the request's `metadata` (up to 16 string pairs), filterable with JSON access
  (`GET /v1/batches/{id}/jobs?metadata=<key>=<value>`, `routeq results --metadata`).

Both stay NULL on jobs made before this migration: their requests could not carry either field.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("end_user", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("metadata", sa.JSON(none_as_null=True), nullable=True))
    op.create_index("ix_jobs_tenant_end_user_finished_at", "jobs", ["tenant", "end_user", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_end_user_finished_at", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("metadata")
        batch_op.drop_column("end_user")
