"""Operator keys: the fleet's operator, apart from a tenant's admins.

- `api_keys.operator`: the key may act on the whole fleet (every tenant's analytics, forcing a
  deployment up or down for everyone). An admin key stays within its tenant. Existing keys,
  admin ones included, are not operators: make an operator key with `routeq keys create --operator`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("operator", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("operator")
