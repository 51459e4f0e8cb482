"""Learned quality: users' feedback on answers, every score given to an answer, and their tallies.

- `feedback`: a rating (1-5 stars or thumbs up/down) a tenant's user gave a job's answer, with an
  optional category and comment; kept as history.
- `quality_evidence`: one row per score given to an answer (source feedback, judge or reference),
  unique per (source, ref) so a redelivered evaluation or a retried POST counts once.
- `quality_tallies`: the evidence summed per deployment x capability x complexity, updated in the
  transaction that adds the evidence; the learned scores (`router_core.quality`) are read from it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("deployment", sa.String(length=128), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("thumbs", sa.String(length=8), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_feedback_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_tenant_job_id", "feedback", ["tenant", "job_id"])
    op.create_index("ix_feedback_tenant_created_at", "feedback", ["tenant", "created_at"])
    op.create_table(
        "quality_evidence",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=160), nullable=False),
        sa.Column("deployment", sa.String(length=128), nullable=False),
        sa.Column("capability", sa.String(length=32), nullable=False),
        sa.Column("complexity", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=True),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quality_evidence"),
        sa.UniqueConstraint("source", "ref", name="uq_quality_evidence_source_ref"),
    )
    op.create_index(
        "ix_quality_evidence_deployment_created_at", "quality_evidence", ["deployment", "created_at"]
    )
    op.create_table(
        "quality_tallies",
        sa.Column("deployment", sa.String(length=128), nullable=False),
        sa.Column("capability", sa.String(length=32), nullable=False),
        sa.Column("complexity", sa.String(length=16), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("deployment", "capability", "complexity", name="pk_quality_tallies"),
    )


def downgrade() -> None:
    op.drop_table("quality_tallies")
    op.drop_index("ix_quality_evidence_deployment_created_at", table_name="quality_evidence")
    op.drop_table("quality_evidence")
    op.drop_index("ix_feedback_tenant_created_at", table_name="feedback")
    op.drop_index("ix_feedback_tenant_job_id", table_name="feedback")
    op.drop_table("feedback")
