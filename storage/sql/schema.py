"""The SQL schema (SQLAlchemy Core). Alembic migrations in `storage/sql/migrations` create it.

    batches  1 ─── n  jobs  1 ─── n  attempts   every provider call, failed ones too
                            1 ─── n  ledger     one charge per call the provider billed
    files     uploaded batch input (content stored) and a batch's output/error files (generated)
    api_keys  the HTTP API's keys: only a SHA-256 of each secret, bound to a tenant and user
    idempotency_keys  (tenant, Idempotency-Key) -> the batch/job a POST created, for its retries
    webhook_endpoints 1 ─── n  webhook_deliveries 1 ─── n  webhook_attempts   the webhooks' outbox

A job is the unit arq delivers; `jobs.run` is the arq try that last started it. Attempts and ledger
rows are keyed by (job_id, run, attempt_no), so writing the same run twice adds nothing: the unique
constraint, not a prior SELECT, is what keeps the ledger exactly-once.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TextClause,
    UniqueConstraint,
    false,
    text,
)

__all__ = [
    "ANSWERED_JOBS",
    "api_keys",
    "attempts",
    "batches",
    "cache_policies",
    "cache_vectors",
    "catalog_versions",
    "eval_results",
    "eval_runs",
    "feedback",
    "files",
    "idempotency_keys",
    "job_plans",
    "jobs",
    "ledger",
    "metadata",
    "quality_evidence",
    "quality_tallies",
    "tenant_limits",
    "truncate_all",
    "webhook_attempts",
    "webhook_deliveries",
    "webhook_endpoints",
    "webhook_secrets",
]


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_BigId = BigInteger().with_variant(Integer(), "sqlite")
_Money = Numeric(20, 10, asdecimal=True)
_Time = DateTime(timezone=True)
_CACHE_SOURCES = "cache_key IS NOT NULL AND status = 'succeeded' AND cache_source IS NULL"
ANSWERED_JOBS = "status = 'succeeded' AND cache_source IS NULL AND user_id <> 'routeq-eval'"
"""The jobs the eval beat samples: provider answers (no cache hits), not evaluation jobs (the user is
`storage.sql.evals.EVAL_USER`). Queries state it as this literal text, so PostgreSQL can use the
partial index `ix_jobs_answered` even in a generic plan, and no other query (the exact cache's, whose
condition is close) can: none of them excludes that user."""

batches = Table(
    "batches",
    metadata,
    Column("id", String(40), primary_key=True),
    # "batch" (a file of prompts), "single" (submit()), "eval", "messages" (an Anthropic message batch)
    Column("kind", String(16), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("name", String(255)),
    Column("total", Integer, nullable=False),
    Column("budget_usd", _Money),  # an optional spend cap for this batch (the user's cap still holds)
    Column("invalid_lines", JSON, nullable=False),  # [{"line", "reason", "custom_id"}] rejected on input
    Column("created_at", _Time, nullable=False),
    Column("completed_at", _Time),
    Column("cancelled_at", _Time),
    # True while a file is submitted chunk by chunk (Client.submit_chunks): its total is not final.
    Column("submitting", Boolean, nullable=False, server_default=false()),
    # Set for batches made through the OpenAI Batch API (POST /v1/batches):
    Column("endpoint", String(64)),  # /v1/chat/completions
    Column("input_file_id", String(40)),
    Column("output_file_id", String(40)),  # generated from the jobs when read
    Column("error_file_id", String(40)),
    Column("completion_window", String(16)),
    Column("expires_at", _Time),  # past it, jobs not started yet end as expired
    Column("metadata", JSON),
    # Set when the tenant deleted the ended batch (DELETE /v1/messages/batches/{id}; migration 0015):
    # gone for the tenant's reads, its jobs and ledger rows kept.
    Column("deleted_at", _Time),
    Index(None, "tenant", "created_at"),
    # The sweeper's batches that may be done without being marked complete (migration 0004).
    Index(
        "ix_batches_unfinished",
        "created_at",
        postgresql_where=text("completed_at IS NULL"),
        sqlite_where=text("completed_at IS NULL"),
    ),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("batch_id", String(40), ForeignKey("batches.id"), nullable=False),
    Column("seq", Integer, nullable=False),  # position in the batch, for results in input order
    Column("custom_id", String(255), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("request", JSON, nullable=False),
    # A chat completion asked with stream=true: the worker relays the text through Redis as it comes.
    Column("stream", Boolean, nullable=False, default=False, server_default=false()),
    Column("status", String(16), nullable=False),
    Column("run", Integer, nullable=False, default=0),
    # Deliveries that started routing; one deferred for capacity gives its start back.
    Column("starts", Integer, nullable=False, default=0, server_default="0"),
    Column("worker", String(128)),
    Column("deployment", String(128)),
    Column("model", String(128)),
    Column("cost_usd", _Money),  # every billed attempt of the run that produced the result
    Column("latency_ms", Float),
    Column("attempt_count", Integer),
    Column("failovers", Integer),
    Column("result", JSON),  # the completion: choices, content, usage, finish_reason, simulated
    Column("error", JSON),  # {"type", "message"} when failed
    # The request's `user` (the caller's end user, not the API key's user) and `metadata` (up to 16
    # string pairs), copied out of `request` so that SQL can group and filter by them (migration 0007).
    Column("end_user", String(256)),
    Column("metadata", JSON(none_as_null=True)),
    # The response cache (migration 0009): the hash of what changes the answer, set on jobs that used
    # the cache; a hit's source job, its similarity (semantic hits) and the dollars it did not pay.
    Column("cache_key", String(64)),
    Column("cache_source", String(40)),
    Column("cache_similarity", Float),
    Column("saved_usd", _Money),
    # The API key that submitted the job (chat, jobs, batches; migration 0017): spend per key.
    # NULL for jobs the CLI or the Python client submitted, which use no key.
    Column("api_key_id", String(40)),
    Column("created_at", _Time, nullable=False),
    Column("started_at", _Time),
    Column("finished_at", _Time),
    UniqueConstraint("batch_id", "seq"),
    UniqueConstraint("batch_id", "custom_id"),
    # (batch_id, status) is read through ix_jobs_batch_breakdown below, which begins with both.
    Index(None, "tenant", "finished_at"),  # analytics over a window
    Index(None, "tenant", "end_user", "finished_at"),  # analytics and lookups by end user
    # The sweeper's old unfinished jobs: the index holds only those rows (migration 0004).
    Index(
        "ix_jobs_unfinished",
        "created_at",
        postgresql_where=text("status IN ('queued', 'running')"),
        sqlite_where=text("status IN ('queued', 'running')"),
    ),
    # The exact cache: the answers providers gave (succeeded jobs with a key that were not hits
    # themselves), by key, tenant and age (migrations 0009, 0010, 0022: the key first, so SQLite
    # seeks each key of a worker's batched lookup rather than scanning the tenant's keys).
    Index(
        "ix_jobs_cached",
        "cache_key",
        "tenant",
        "finished_at",
        postgresql_where=text(_CACHE_SOURCES),
        sqlite_where=text(_CACHE_SOURCES),
    ),
    # The answers providers gave (not cache hits), by finish time: the eval beat samples them
    # after its cursor (workers/evals.py, migration 0014).
    Index(
        "ix_jobs_answered",
        "finished_at",
        "id",
        postgresql_where=text(ANSWERED_JOBS),
        sqlite_where=text(ANSWERED_JOBS),
    ),
    # A batch's jobs per status and deployment with their cost, latency and failovers (the dashboard's
    # batch page, storage/sql/dashboard.py): one scan of the index alone (migration 0018). The figures
    # are key columns, not INCLUDEd, so that SQLite's index covers the query too.
    Index(
        "ix_jobs_batch_breakdown",
        "batch_id",
        "status",
        "deployment",
        "cost_usd",
        "latency_ms",
        "failovers",
    ),
)

job_plans = Table(
    "job_plans",
    metadata,
    # The plan a run routed with (candidates in order with their estimates, every exclusion with its
    # reason), as the worker made it: what the dashboard's job page shows (migration 0021). Its own
    # table, so reading a batch's jobs never loads plans. A run that made no plan (a cache hit, an
    # invalid request) has none.
    Column("job_id", String(40), ForeignKey("jobs.id"), primary_key=True),
    Column("run", Integer, primary_key=True),
    Column("plan", JSON, nullable=False),  # router_core.models.Plan as JSON, defaults left out
    Column("created_at", _Time, nullable=False),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("job_id", String(40), ForeignKey("jobs.id"), nullable=False),
    Column("run", Integer, nullable=False),
    Column("attempt_no", Integer, nullable=False),
    Column("deployment", String(128), nullable=False),
    Column("provider", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error_class", String(64)),
    Column("error", Text),
    Column("status_code", Integer),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("latency_ms", Float, nullable=False),
    Column("wait_ms", Float, nullable=False),
    Column("simulated", Boolean, nullable=False),
    Column("created_at", _Time, nullable=False),
    UniqueConstraint("job_id", "run", "attempt_no"),
    Index(None, "created_at"),  # analytics over a window
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("job_id", String(40), ForeignKey("jobs.id"), nullable=False),
    Column("run", Integer, nullable=False),
    Column("attempt_no", Integer, nullable=False),
    Column("batch_id", String(40), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("deployment", String(128), nullable=False),
    Column("provider", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("cost_usd", _Money, nullable=False),
    Column("usage", JSON, nullable=False),  # the provider's token counts as reported
    Column("simulated", Boolean, nullable=False),
    # A call whose worker died before recording the answer: billed at the worst case held for it.
    Column("estimated", Boolean, nullable=False, default=False, server_default=false()),
    Column("created_at", _Time, nullable=False),
    # The exactly-once guarantee: a redelivered or replayed run cannot bill the same call twice.
    UniqueConstraint("job_id", "run", "attempt_no"),
    Index(None, "tenant", "user_id", "created_at"),
    # A batch's charges (`Ledger.billed`: its cost on the dashboard and in `routeq run`'s summary),
    # summed from the index alone on both databases (migration 0018).
    Index("ix_ledger_batch_id", "batch_id", "cost_usd"),
)

files = Table(
    "files",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("purpose", String(32), nullable=False),  # batch (uploaded), batch_output, batch_error
    Column("filename", String(255), nullable=False),
    # An upload's size; a generated file's once its batch has finished (0 before it is first read).
    Column("bytes", BigInteger, nullable=False),
    Column("content", LargeBinary),  # an upload's bytes; NULL for a batch's generated files
    Column("batch_id", String(40)),  # the batch a generated file belongs to
    Column("created_at", _Time, nullable=False),
    Column("expires_at", _Time),  # past it the file is gone (expires_after, output_expires_after)
    Index(None, "tenant", "created_at"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),  # key_...: safe to show and log
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256 hex of the secret
    Column("prefix", String(16), nullable=False),  # the secret's first characters, to recognise it
    Column("tenant", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("name", String(255)),
    Column("admin", Boolean, nullable=False, default=False, server_default=false()),  # within its tenant
    Column("operator", Boolean, nullable=False, default=False, server_default=false()),  # the whole fleet
    Column("created_at", _Time, nullable=False),
    Column("revoked_at", _Time),
    # Request and token rates (per minute) and the burst a key may use, fleet-wide; NULL: no limit.
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("burst", Integer),  # requests allowed at once (the bucket's size); NULL: one minute's rpm
    # Deployment ids, model names, <provider>/<model> patterns the key may use; NULL: every one.
    Column("allowed_models", JSON),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # One row per key a tenant sent with a POST that creates work: its retries get the same answer.
    Column("tenant", String(128), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # SHA-256 of route + body: a reuse must match
    Column("batch_id", String(40), nullable=False),  # what the first request created
    Column("job_id", String(40)),  # its one job (chat completions, /v1/jobs); NULL for a batch
    Column("created_at", _Time, nullable=False),  # rows older than the retention window are replaced
    Index(None, "created_at"),
)

cache_policies = Table(
    "cache_policies",
    metadata,
    # A tenant's cache defaults; NULL falls back to the fleet's setting (ROUTEQ_CACHE_*).
    Column("tenant", String(128), primary_key=True),
    Column("enabled", Boolean),
    Column("ttl_s", Integer),
    Column("semantic", Boolean),
    Column("threshold", Float),
    Column("cleared_at", _Time),  # `routeq cache clear`: answers finished before it are not served
    Column("updated_at", _Time, nullable=False),
)

cache_vectors = Table(
    "cache_vectors",
    metadata,
    # The semantic cache's embeddings, one per cached job; the vector index is built from these rows.
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("job_id", String(40), ForeignKey("jobs.id"), nullable=False, unique=True),
    Column("tenant", String(128), nullable=False),
    Column("grp", String(64), nullable=False),  # hash of the request without its text
    Column("embedder", String(128), nullable=False),  # the embedding deployment that made it
    Column("dims", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),  # float32, little-endian
    Column("created_at", _Time, nullable=False),
    Index(None, "tenant", "grp"),
)

feedback = Table(
    "feedback",
    metadata,
    # What a tenant's users said of a job's answer (POST /v1/feedback, `routeq feedback`); history.
    Column("id", String(40), primary_key=True),  # fb_...
    Column("tenant", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("job_id", String(40), ForeignKey("jobs.id"), nullable=False),
    Column("deployment", String(128), nullable=False),  # the deployment that gave the answer
    Column("rating", Integer),  # 1-5 stars, or NULL for thumbs
    Column("thumbs", String(8)),  # "up" / "down", or NULL for stars
    Column("score", Float, nullable=False),  # the rating in [0, 1]: its quality evidence
    Column("category", String(64)),
    Column("comment", Text),
    Column("created_at", _Time, nullable=False),
    Index(None, "tenant", "job_id"),
    Index(None, "tenant", "created_at"),
)

quality_evidence = Table(
    "quality_evidence",
    metadata,
    # Every score given to an answer (a judge, a reference set, a user's feedback), once each.
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("source", String(16), nullable=False),  # feedback, judge, reference
    Column("ref", String(160), nullable=False),  # what was scored, unique per source: redelivery adds nothing
    Column("deployment", String(128), nullable=False),
    Column("capability", String(32), nullable=False),
    Column("complexity", String(16), nullable=False),
    Column("score", Float, nullable=False),
    Column("tenant", String(128)),
    Column("job_id", String(40)),  # the job whose answer was scored, when it was a job
    Column("created_at", _Time, nullable=False),
    UniqueConstraint("source", "ref"),
    Index(None, "deployment", "created_at"),
)

quality_tallies = Table(
    "quality_tallies",
    metadata,
    # Evidence summed per deployment x capability x complexity, in the transaction that adds it:
    # the learned scores are read from these few rows, never from the evidence itself.
    Column("deployment", String(128), primary_key=True),
    Column("capability", String(32), primary_key=True),
    Column("complexity", String(16), primary_key=True),
    Column("samples", Integer, nullable=False),
    Column("total", Float, nullable=False),
    Column("updated_at", _Time, nullable=False),
)

tenant_limits = Table(
    "tenant_limits",
    metadata,
    # The API's tenant settings: the tenant's request and token rates over all its keys (per
    # minute) and its burst (NULL: none); the strategy of its requests that name none (NULL: the
    # environment's, ROUTEQ_DEFAULT_STRATEGY).
    Column("tenant", String(128), primary_key=True),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("burst", Integer),
    Column("default_strategy", String(32)),
    Column("updated_at", _Time, nullable=False),
)

eval_runs = Table(
    "eval_runs",
    metadata,
    # One `routeq eval FILE --deployments ...` run (migration 0014).
    Column("id", String(40), primary_key=True),  # evalrun_...
    Column("tenant", String(128), nullable=False),
    Column("name", String(255), nullable=False),  # the reference file's name
    Column("judge", String(128)),  # the judge deployment of its `judge` lines
    Column("batch_id", String(40), ForeignKey("batches.id")),  # where its jobs ran
    Column("deployments", JSON, nullable=False),  # the deployments compared, in the order asked
    Column("created_at", _Time, nullable=False),
    Index(None, "tenant", "created_at"),
)

eval_results = Table(
    "eval_results",
    metadata,
    # One reference line answered by one deployment, and its score (NULL: no score, see `error`).
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(40), ForeignKey("eval_runs.id"), nullable=False),
    Column("line", Integer, nullable=False),
    Column("deployment", String(128), nullable=False),
    Column("capability", String(32), nullable=False),
    Column("complexity", String(16), nullable=False),
    Column("method", String(16), nullable=False),  # exact, contains, json, judge
    Column("score", Float),
    Column("cost_usd", _Money),  # the answer's calls, plus the judge's for a `judge` line
    Column("latency_ms", Float),
    Column("job_id", String(40), ForeignKey("jobs.id")),
    Column("error", Text),
    UniqueConstraint("run_id", "line", "deployment"),
)

webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    # The secret a tenant's batch webhooks (a URL given with one batch) are signed with (migration 0019).
    Column("tenant", String(128), primary_key=True),
    Column("secret", String(128), nullable=False),  # whsec_<base64>
    Column("created_at", _Time, nullable=False),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    # Where a tenant's events go: an endpoint it registered (batch_id NULL), or one batch's URL.
    Column("id", String(40), primary_key=True),  # whe_...
    Column("tenant", String(128), nullable=False),
    Column("url", Text, nullable=False),
    Column("secret", String(128)),  # its own signing secret; NULL: the tenant's (webhook_secrets)
    Column("events", JSON, nullable=False),  # the event types it receives
    Column("batch_id", String(40), ForeignKey("batches.id")),  # only this batch's events
    Column("created_at", _Time, nullable=False),
    Column("removed_at", _Time),  # no new deliveries after it (the old ones stay visible)
    Index(None, "tenant", "batch_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    # The outbox: one event for one endpoint, written in the transaction that finished the job or
    # batch; (endpoint, event) is unique, so a finishing job delivered twice makes one delivery.
    Column("id", String(40), primary_key=True),  # whd_...
    Column("tenant", String(128), nullable=False),
    Column("endpoint_id", String(40), ForeignKey("webhook_endpoints.id"), nullable=False),
    Column("event_id", String(64), nullable=False),  # the webhook-id header: the same on every attempt
    Column("event_type", String(32), nullable=False),
    Column("batch_id", String(40), nullable=False),
    Column("job_id", String(40)),  # job.failed only
    Column("url", Text, nullable=False),
    Column("body", Text, nullable=False),  # the exact JSON sent on every attempt
    Column("state", String(16), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False),  # attempts claimed so far
    Column("next_attempt_at", _Time, nullable=False),  # due then; a claim moves it past its lease
    Column("created_at", _Time, nullable=False),
    Column("finished_at", _Time),  # delivered or given up
    Column("last_status", Integer),  # the last attempt's HTTP status, if it got one
    Column("last_error", Text),
    UniqueConstraint("endpoint_id", "event_id"),
    Index(None, "tenant", "created_at"),
    Index(None, "batch_id"),
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        postgresql_where=text("state = 'pending'"),
        sqlite_where=text("state = 'pending'"),
    ),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    # Every POST of a delivery: when, what came back (status or error), how long it took.
    Column("delivery_id", String(40), ForeignKey("webhook_deliveries.id"), primary_key=True),
    Column("attempt_no", Integer, primary_key=True),
    Column("started_at", _Time, nullable=False),
    Column("status_code", Integer),  # NULL: no answer (timeout, refused connection...)
    Column("error", Text),
    Column("latency_ms", Float, nullable=False),
    Column("response_excerpt", Text),  # the first 500 characters of the answer's body
)

catalog_versions = Table(
    "catalog_versions",
    metadata,
    # The live catalog, append-only: every change is a new row holding the whole catalog document
    # (the TOML's tables as JSON); the newest version is the catalog (storage/fleet/catalog.py).
    Column("version", Integer, primary_key=True, autoincrement=False),  # 1, 2, ...: a commit claims n+1
    Column("document", JSON, nullable=False),  # {"deployments": [{field: value}, ...]}
    Column("author", String(128), nullable=False),
    Column("comment", Text, nullable=False),
    Column("seed_hash", String(64)),  # a version seeded from the TOML file: its document's SHA-256
    Column("created_at", _Time, nullable=False),
)


def truncate_all() -> TextClause:
    """PostgreSQL's `TRUNCATE` of every routeq table (tests and benches start from empty ones; one
    statement, so the foreign keys between them never refuse it)."""
    return text("TRUNCATE " + ", ".join(table.name for table in metadata.sorted_tables))
