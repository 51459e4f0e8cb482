"""HTTP API: API keys, files, OpenAI Batch API fields on batches, streamed jobs.

- `api_keys`: one row per key; only the SHA-256 of the secret is stored.
- `files`: uploaded batch input files (content kept) and batches' generated output/error files.
- `batches`: endpoint, input/output/error file ids, completion window, expiry and metadata of
  batches created through `POST /v1/batches`.
- `jobs.stream`: the job's text is relayed through Redis as the provider streams it.
- indexes for `/v1/analytics` windows: `jobs (tenant, finished_at)`, `attempts (created_at)`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("batch_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    op.create_index(op.f("ix_files_tenant_created_at"), "files", ["tenant", "created_at"], unique=False)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("admin", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("endpoint", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("input_file_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("output_file_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("error_file_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("completion_window", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("metadata", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stream", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index(op.f("ix_jobs_tenant_finished_at"), "jobs", ["tenant", "finished_at"], unique=False)
    op.create_index(op.f("ix_attempts_created_at"), "attempts", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_attempts_created_at"), table_name="attempts")
    op.drop_index(op.f("ix_jobs_tenant_finished_at"), table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("stream")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        for name in (
            "metadata",
            "expires_at",
            "completion_window",
            "error_file_id",
            "output_file_id",
            "input_file_id",
            "endpoint",
        ):
            batch_op.drop_column(name)
    op.drop_table("api_keys")
    op.drop_index(op.f("ix_files_tenant_created_at"), table_name="files")
    op.drop_table("files")
