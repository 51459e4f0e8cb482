"""Deleted batches: `batches.deleted_at`.

`DELETE /v1/messages/batches/{id}` (the Anthropic Message Batches API) deletes an ended batch: from
then on it is gone for its tenant (every read scoped to a tenant answers 404 and listings leave it
out). Its jobs, attempts and ledger rows stay, so spend and analytics still count what it cost, and
operators (reads for any tenant) still see it. NULL: not deleted.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
