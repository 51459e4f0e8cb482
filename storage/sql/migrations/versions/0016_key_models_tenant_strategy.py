"""Keys limited to allowed models (`api_keys.allowed_models`) and a tenant's default strategy
(`tenant_limits.default_strategy`, next to the tenant's rate limits: the API's tenant settings).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allowed_models", sa.JSON(), nullable=True))
    with op.batch_alter_table("tenant_limits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("default_strategy", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenant_limits", schema=None) as batch_op:
        batch_op.drop_column("default_strategy")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("allowed_models")
