"""Rate limits of the HTTP API: per key (`api_keys.rpm`, `tpm`, `burst`) and per tenant
(`tenant_limits`), enforced fleet-wide in Redis (`storage.fleet.ratelimits`).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tpm", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("burst", sa.Integer(), nullable=True))
    op.create_table(
        "tenant_limits",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("burst", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_tenant_limits"),
    )


def downgrade() -> None:
    op.drop_table("tenant_limits")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("burst")
        batch_op.drop_column("tpm")
        batch_op.drop_column("rpm")
