"""The response cache: what a job's answer is keyed by, what a hit reused, tenants' cache policies and
the embeddings of the semantic cache.

- `jobs.cache_key`: SHA-256 of everything in the request that changes the answer
  (`router_core.cache.cache_key`), set on a job that used the cache. With the tenant and
  `finished_at` it is the exact cache: the newest succeeded job of the tenant with that key, younger
  than the TTL asked for, is the answer (partial index over succeeded rows that have a key).
- `jobs.cache_source`, `cache_similarity`, `saved_usd`: a hit's source job (the job whose provider
  answer it reused), its similarity (semantic hits; NULL for exact ones) and the dollars the source's
  calls cost, not paid again.
- `cache_policies`: a tenant's cache defaults (on/off, TTL, semantic, threshold) and `cleared_at`
  (`routeq cache clear`: answers finished before it are no longer served; no row is deleted).
- `cache_vectors`: one embedding per cached job of a tenant that uses the semantic cache, the source
  of truth from which the vector index is built (`storage/sql/vectors.py`). `grp` is the hash of the
  request without its message text: only requests alike in everything else are compared.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_CACHED = "cache_key IS NOT NULL AND status = 'succeeded'"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cache_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("cache_source", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("cache_similarity", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("saved_usd", sa.Numeric(20, 10, asdecimal=True), nullable=True))
    op.create_index(
        "ix_jobs_cached",
        "jobs",
        ["tenant", "cache_key", "finished_at"],
        postgresql_where=sa.text(_CACHED),
        sqlite_where=sa.text(_CACHED),
    )
    op.create_table(
        "cache_policies",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=True),
        sa.Column("ttl_s", sa.Integer(), nullable=True),
        sa.Column("semantic", sa.Boolean(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_cache_policies"),
    )
    op.create_table(
        "cache_vectors",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("grp", sa.String(length=64), nullable=False),
        sa.Column("embedder", sa.String(length=128), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_cache_vectors_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_cache_vectors"),
        sa.UniqueConstraint("job_id", name="uq_cache_vectors_job_id"),
    )
    op.create_index("ix_cache_vectors_tenant_grp", "cache_vectors", ["tenant", "grp"])


def downgrade() -> None:
    op.drop_index("ix_cache_vectors_tenant_grp", table_name="cache_vectors")
    op.drop_table("cache_vectors")
    op.drop_table("cache_policies")
    op.drop_index("ix_jobs_cached", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("saved_usd")
        batch_op.drop_column("cache_similarity")
        batch_op.drop_column("cache_source")
        batch_op.drop_column("cache_key")
