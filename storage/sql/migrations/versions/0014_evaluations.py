"""Evaluations: reference-set runs (`routeq eval`) and their scored lines; an index for the eval beat.

- `eval_runs`: one `routeq eval FILE --deployments ...` run: the tenant, the file's name, the judge
  deployment (for lines scored by a judge) and the batch its jobs ran in.
- `eval_results`: one scored line x deployment of a run: the job that answered, the capability and
  complexity the line counts under, the scoring method, the score (NULL when the job failed or the
  verdict could not be read, with the reason in `error`), its cost and latency.
- `ix_jobs_answered`: the succeeded jobs a provider answered (not cache hits, not evaluation jobs), by
  finish time: the eval beat (workers/evals.py) pages through them after its cursor to sample jobs
  to judge.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
# Not evaluation jobs (user routeq-eval): no other query excludes them, so none but the eval beat's
# (which states this text literally) can use the index; the exact cache's close condition keeps its own.
_ANSWERED = "status = 'succeeded' AND cache_source IS NULL AND user_id <> 'routeq-eval'"


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("judge", sa.String(length=128), nullable=True),
        sa.Column("batch_id", sa.String(length=40), nullable=True),
        sa.Column("deployments", sa.JSON(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name="fk_eval_runs_batch_id_batches"),
        sa.PrimaryKeyConstraint("id", name="pk_eval_runs"),
    )
    op.create_index("ix_eval_runs_tenant_created_at", "eval_runs", ["tenant", "created_at"])
    op.create_table(
        "eval_results",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("deployment", sa.String(length=128), nullable=False),
        sa.Column("capability", sa.String(length=32), nullable=False),
        sa.Column("complexity", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=10), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["eval_runs.id"], name="fk_eval_results_run_id_eval_runs"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_eval_results_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_eval_results"),
        sa.UniqueConstraint("run_id", "line", "deployment", name="uq_eval_results_run_id_line_deployment"),
    )
    where = sa.text(_ANSWERED)
    columns = ["finished_at", "id"]
    op.create_index("ix_jobs_answered", "jobs", columns, postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    op.drop_index("ix_jobs_answered", table_name="jobs")
    op.drop_table("eval_results")
    op.drop_index("ix_eval_runs_tenant_created_at", table_name="eval_runs")
    op.drop_table("eval_runs")
