"""The live catalog: every version of the deployment catalog, append-only.

- `catalog_versions`: one row per version (1, 2, ...), holding the whole catalog document (the
  TOML file's `[[deployments]]` tables as JSON), who made it and why; `seed_hash` marks a version
  imported from the TOML file at start-up (the SHA-256 of its document). The newest row is the
  catalog every worker and API process routes with (storage/fleet/catalog.py).

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("seed_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_catalog_versions"),
    )


def downgrade() -> None:
    op.drop_table("catalog_versions")
