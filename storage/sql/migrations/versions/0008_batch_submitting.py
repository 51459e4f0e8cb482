"""`batches.submitting`: a batch whose file is still being submitted chunk by chunk.

`Client.submit_chunks` inserts a large file's jobs a chunk at a time; until it seals the batch its
`total` is not final, so the fleet's sweeper must not complete it (`Batches.finalizing`), however
long the submission takes. Existing batches were all submitted whole: false.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("submitting", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("submitting")
