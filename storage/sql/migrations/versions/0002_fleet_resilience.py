"""Fleet resilience: job start counts, per-batch budgets, estimated ledger charges.

- `jobs.starts`: deliveries that started routing; a delivery deferred for capacity gives its start
  back, so `ROUTEQ_MAX_TRIES` counts crashes and outages, not waiting.
- `batches.budget_usd`: an optional spend cap for the batch, on top of the user's and tenant's.
- `ledger.estimated`: a charge for a call whose worker died before it recorded the provider's
  answer; billed at the worst case that was held for it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("starts", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("budget_usd", sa.Numeric(precision=20, scale=10), nullable=True))
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("estimated", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_column("estimated")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("budget_usd")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("starts")
