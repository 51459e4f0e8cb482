"""Pipeline settings: the router's settings plus where Redis and the SQL store live.

Read once at process start (`Settings()`), from `ROUTEQ_*` environment variables or `.env`, then
passed down explicitly. Producer, workers and CLI all build the same object, so one `.env` file
configures the whole fleet.
"""

from __future__ import annotations

from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator

from router_core.cache import CachePolicy
from router_core.limits import (
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_MESSAGES,
    DEFAULT_MAX_PROMPT_BYTES,
    RequestLimits,
)
from router_core.models import Strategy
from router_core.periods import load_zone
from router_core.policy import parse_default_strategy
from router_core.settings import RouterSettings

__all__ = ["DEFAULT_DATABASE_URL", "Settings"]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./routeq.db"


class Settings(RouterSettings):
    """Everything a producer or worker process needs; the router's own fields are inherited."""

    redis_url: str | None = Field(
        default=None,
        description="Redis for the queue, events and fleet state; unset = embedded in-process Redis.",
    )
    redis_max_connections: int = Field(
        default=64,
        ge=2,
        description="Connections one process opens to Redis at most; a command finding them all busy "
        "waits up to redis_pool_timeout_s for one. Waiting requests share one subscription.",
    )
    redis_pool_timeout_s: int = Field(
        default=10, ge=1, description="How long a command waits for a free connection from the pool."
    )
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy async URL: sqlite+aiosqlite:///file.db or postgresql+asyncpg://...",
    )
    queue_name: str = Field(default="routeq:queue", min_length=1)
    worker_concurrency: int = Field(default=200, ge=1, description="Jobs one worker process runs at once.")
    queue_read_limit: int | None = Field(
        default=None,
        ge=1,
        description="Most jobs a worker claims in one poll (one Lua call, which never reads the jobs "
        "running anywhere in the fleet); unset = 4 x worker_concurrency.",
    )
    poll_delay_s: float = Field(
        default=0.05,
        ge=0,
        description="Longest wait of an idle worker between two looks at the queue. Enqueues, "
        "re-queues and its own finished jobs wake it sooner (queue_wake).",
    )
    queue_wake: bool = Field(
        default=True,
        description="Workers subscribe to routeq:queue-wake:<queue> (pinged by every enqueue and "
        "re-queue) and poll at once; false = they poll every poll_delay_s only.",
    )
    job_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="A job running longer is cancelled and fails (routing gets 90% of it).",
    )
    max_tries: int = Field(
        default=5,
        ge=1,
        description="Runs of one job that may end without finishing (worker crashes, outages) before it "
        "fails. Waiting for capacity does not count.",
    )
    rate_limit_margin_s: float = Field(
        default=1.0,
        ge=0,
        description="The longest a call may take from its start to the provider counting it (SDK, "
        "network, the provider's queue), for calls whose provider does not report how long it held "
        "them: such a call counts against rpm/tpm until a rate window after its answer, or after its "
        "start plus this margin when that is sooner.",
    )
    trust_processing_time: bool = Field(
        default=True,
        description="Believe a provider's report of how long it held a call (OpenAI's "
        "openai-processing-ms): the call arrived at least that long before its answer, so it stops "
        "counting against rpm/tpm that much sooner, and the margin is not needed for it. false for a "
        "server whose header cannot be trusted.",
    )
    admission_wait_s: float = Field(
        default=10.0,
        ge=0,
        description="A job refused admission whose turn is at most this far off waits for it in its "
        "worker (a worker slot) instead of going back to the queue (an arq delivery). Capped at 5% of "
        "job_timeout_s; 0 = always re-queue.",
    )
    carry_request_max_bytes: int = Field(
        default=4096,
        ge=0,
        description="A queued job's arq payload carries its request when it is at most this many bytes "
        "(JSON), so a worker asks for admission before its first SQL write; Redis holds it until the "
        "job runs. 0 = payloads carry only job ids.",
    )
    job_lease_s: float = Field(
        default=15.0,
        gt=0,
        description="A running job's claim in Redis lasts this long and is renewed every third of it: a "
        "killed worker's jobs run again on another worker within this, plus one poll.",
    )
    sweep_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="How often the fleet looks for orphaned jobs (unfinished in SQL with nothing in Redis "
        "that will run them) and re-queues them; one worker sweeps at a time. 0 = never.",
    )
    sweep_min_age_s: float = Field(
        default=120.0,
        ge=0,
        description="Jobs and batches younger than this are left to the producer that is still "
        "enqueueing them; only older ones are swept.",
    )
    shutdown_grace_s: int = Field(
        default=20,
        ge=0,
        description="On SIGTERM a worker stops taking jobs and lets running ones finish for this long, "
        "then cancels and re-queues the rest; `routeq serve` stops taking connections and gives the "
        "requests in progress this long to be answered, then closes them (their jobs go on: read them "
        "by id).",
    )
    worker_metrics_port: int | None = Field(
        default=9101,
        ge=0,
        le=65535,
        description="Port of each worker's Prometheus endpoint (GET /metrics, all interfaces); 0 = any "
        "free port (logged at start), unset or empty = no endpoint.",
    )
    gc_threshold: int = Field(
        default=20_000,
        ge=0,
        description="Allocations between collections of young objects in `routeq worker`, `serve` and "
        "`run`, which also freeze what start-up left alive (storage/logs.py); 0 = Python's defaults "
        "(700, nothing frozen).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines of `routeq worker`, `serve` and `run`: text for a terminal, json (one "
        "object a line, with job, batch, tenant and deployment where known) for a log pipeline.",
    )
    event_retention_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long a batch's event stream is kept after its last event.",
    )
    default_user_budget_usd: float = Field(
        default=1.00,
        ge=0,
        description="Spend cap of a user with no cap of their own (`routeq budget set user:<t>/<u>`), "
        "in USD, for the whole fleet.",
    )
    budget_timezone: str = Field(
        default="UTC",
        description="The IANA time zone (`Europe/Paris`, `America/New_York`) whose local midnights start "
        "daily, weekly (Monday) and monthly budget periods; the same on every worker and API process.",
    )
    api_dev_mode: bool = Field(
        default=False,
        description="HTTP API without keys: every request acts as `tenant`/`user`, with admin rights. "
        "For a laptop only; `routeq run --serve` turns it on, nothing else does.",
    )
    api_access_log: bool = Field(
        default=True,
        description="`routeq serve` logs a line for every HTTP request (uvicorn's access log). Off, "
        "requests are still counted by route and status in /metrics; the line costs a busy API about "
        "3% of its CPU.",
    )
    api_max_upload_bytes: int = Field(
        default=100 * 1024 * 1024,
        ge=1024,
        description="Largest file `POST /v1/files` accepts; bigger uploads are refused with 413 as soon "
        "as their size is known, before they are read whole.",
    )
    api_max_batch_lines: int = Field(default=50_000, ge=1, description="Most requests in one batch file.")
    api_wait_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long `POST /v1/chat/completions` waits for its job; past it the answer is 504 "
        "naming the job id, which stays readable at /v1/jobs/<id>.",
    )
    max_prompt_bytes: int = Field(
        default=DEFAULT_MAX_PROMPT_BYTES,
        ge=1,
        description="Most UTF-8 bytes of text in one request's messages; a bigger request is refused "
        "by field (its line in a batch file, 400 from the API) before anything is stored.",
    )
    max_messages: int = Field(default=DEFAULT_MAX_MESSAGES, ge=1, description="Most messages in one request.")
    max_line_bytes: int = Field(
        default=DEFAULT_MAX_LINE_BYTES,
        ge=1,
        description="Longest line of a JSONL batch file (CLI and Batch API); a longer line is refused "
        "unread while the other lines run.",
    )
    api_idempotency_retention_s: int = Field(
        default=24 * 3600,
        ge=60,
        description="How long an Idempotency-Key sent to a POST that creates work is remembered: within "
        "it, the same key and body get the first request's job or batch instead of a new one.",
    )
    cache: bool = Field(
        default=True,
        description="The response cache's default: a request whose answer the tenant already has "
        "(same messages, model, strategy and answer-shaping fields) is served it without a call. "
        "A tenant's policy and a request's preferences.cache override it.",
    )
    cache_ttl_s: int = Field(default=7 * 24 * 3600, gt=0, description="Oldest answer the cache serves.")
    cache_sampled: bool = Field(
        default=True,
        description="Cache requests with temperature > 0 too (a re-run batch costs nothing); false "
        "leaves them out unless they ask with preferences.cache.",
    )
    cache_wait_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a job waits for an identical request in flight (single-flight) before "
        "calling by itself.",
    )
    quality_prior_strength: float = Field(
        default=10.0,
        gt=0,
        description="How many scored answers the catalog's quality counts as: learned quality moves "
        "half way to the evidence's mean at this many samples.",
    )
    quality_refresh_s: float = Field(
        default=5.0,
        ge=0,
        description="How long a process plans with the learned quality scores it read before reading "
        "them again (new evidence reaches every worker within this).",
    )
    catalog_refresh_s: float = Field(
        default=2.0,
        gt=0,
        description="The live catalog's bound: a process that missed a change's message reads the "
        "catalog version from Redis this often, so every worker and API process uses a change within it.",
    )
    eval_judge: str | None = Field(
        default=None,
        description="The catalog deployment that grades a sampled share of finished jobs (automatic "
        "evaluations); unset = no automatic evaluations.",
    )
    eval_sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of answered jobs the judge grades (chosen by a hash of the job id, so every "
        "worker picks the same ones).",
    )
    eval_rubric: str | None = Field(
        default=None,
        description="What the judge is told a good answer is; unset = router_core.judging.DEFAULT_RUBRIC.",
    )
    eval_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often one worker of the fleet samples newly answered jobs and sends them to "
        "the judge.",
    )
    eval_batch: int = Field(
        default=50, ge=1, description="Most jobs sent to the judge per interval (the rest wait a beat)."
    )
    semantic_cache: bool = Field(
        default=False, description="Also serve answers to prompts that mean the same (embeddings)."
    )
    semantic_threshold: float = Field(
        default=0.95, gt=0, le=1, description="Least cosine similarity of a semantic cache hit."
    )
    embedding_deployment: str | None = Field(
        default=None,
        description="The catalog deployment that embeds prompts for the semantic cache; unset = the "
        'first with task = "embedding".',
    )
    default_strategy: Strategy | None = Field(
        default=None,
        description="The strategy of a request that names none and whose tenant has no default of its "
        "own; unset = balanced.",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="How long one webhook POST may take before it counts as failed."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Attempts of a webhook delivery before it is given up (state failed)."
    )
    webhook_backoff_s: float = Field(
        default=5.0,
        ge=0,
        description="Wait after a webhook's first failed attempt; it doubles with each further one "
        "(never shorter than a 429/503's Retry-After, never longer than webhook_backoff_max_s).",
    )
    webhook_backoff_max_s: float = Field(default=3600.0, ge=0, description="Longest wait between attempts.")
    webhook_poll_s: float = Field(
        default=1.0,
        ge=0,
        description="How often each worker looks for webhook deliveries due (0 = this worker sends none).",
    )
    tenant: str = Field(default="default", min_length=1, description="Tenant recorded on submitted jobs.")
    user: str = Field(default="default", min_length=1, description="User recorded on submitted jobs.")

    def cache_policy(self) -> CachePolicy:
        """The fleet's cache defaults (a tenant's policy overrides them)."""
        return CachePolicy(
            enabled=self.cache,
            ttl_s=self.cache_ttl_s,
            semantic=self.semantic_cache,
            threshold=self.semantic_threshold,
            sampled=self.cache_sampled,
        )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_redis_is_embedded(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("default_strategy", mode="before")
    @classmethod
    def _known_strategy(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_default_strategy(value) if value.strip() else None
        return value

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return load_zone(value).key

    @field_validator("worker_metrics_port", mode="before")
    @classmethod
    def _empty_port_is_disabled(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def budget_zone(self) -> ZoneInfo:
        """The time zone whose local midnights start budget periods (`budget_timezone`)."""
        return ZoneInfo(self.budget_timezone)

    def request_limits(self) -> RequestLimits:
        """The size limits every request entering the pipeline is checked against."""
        return RequestLimits(max_prompt_bytes=self.max_prompt_bytes, max_messages=self.max_messages)

    def fleet_env(self) -> dict[str, str]:
        """The environment variables that put another `routeq` process (a worker, a server) on these
        settings' Redis, database and queue; it reads the rest as any process does."""
        if self.redis_url is None:
            raise ValueError("these settings are embedded (no ROUTEQ_REDIS_URL): no other process can join")
        prefix = self.model_config.get("env_prefix", "")
        fleet = {
            "redis_url": self.redis_url,
            "database_url": self.database_url,
            "queue_name": self.queue_name,
        }
        return {f"{prefix}{name}".upper(): value for name, value in fleet.items()}

    @property
    def embedded(self) -> bool:
        """True when no Redis URL is set: `routeq run` then uses an in-process Redis."""
        return self.redis_url is None

    @property
    def read_limit(self) -> int:
        """The arq queue_read_limit this worker uses."""
        return self.queue_read_limit or 4 * self.worker_concurrency
