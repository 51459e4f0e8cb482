"""The API key that submitted each job: `jobs.api_key_id`, for spend per key (`GET /v1/spend?group_by=key`).

Filled by the API's submit paths (chat completions, messages, jobs, batches); NULL for jobs the CLI
or the Python client submitted, and for every job made before this migration.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("api_key_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("api_key_id")
