"""The dashboard's page of a 100,000-job batch (a benchmark, not a test): GET /ui/batches/{id}, signed
in, over real HTTP, on SQLite and on PostgreSQL.

For each store, a batch of N jobs (default 100,000) is seeded straight into SQL: the jobs through the
store's own bulk insert (`store.batches.create`: COPY on PostgreSQL, executemany on SQLite), then
finished in a few set-based statements, as a fleet of workers would have left them: 96% succeeded
over five deployments (one in ten after a failover), 4% failed for one of three reasons, an attempt
row for every provider call and a ledger row for every billed one. Another tenant's batch (default
20,000 jobs) sits next to it, so every query has to pick the batch's rows out of more.

`routeq serve` (its own process, as in production) then serves the store; the bench signs in with
an API key (POST /ui/login, the `routeq_session` cookie) and times, over one keep-alive connection,
the batch page (--requests times, after 3 unmeasured) and its jobs' second page (the page's
a#next-page: keyset paging), in each state of the batch:

    running            every job finished, the batch not yet marked complete: as for a running
                       batch, its figures are aggregated over all its rows on every view
    running, vacuumed  (PostgreSQL) the same after VACUUM ANALYZE, as autovacuum soon leaves it
    ended              marked complete: its figures are computed once and kept in Redis

Prints the median and p95 of each, and exits 1 if a batch page's median is over the goal
(issue 16: 300 ms on this machine). --reuse measures the batch an earlier run left in the store
(PostgreSQL, or --sqlite-path) instead of seeding again.

Stores: a fresh SQLite file in a temporary directory, and PostgreSQL at --database-url (default
ROUTEQ_BENCH_DATABASE_URL or postgresql+asyncpg://postgres@127.0.0.1:5432/routeq_bench_ui; the
database is created when missing and its routeq tables are TRUNCATEd); `--stores sqlite` or
`--stores postgresql` runs one. The Redis database (default redis://127.0.0.1:6379/10, or
ROUTEQ_BENCH_REDIS_URL) holds the sessions and is FLUSHDB'd at the start and end.

Run: `.venv/bin/python bench/ui_batch_page.py [--jobs N] [--requests R] [--stores sqlite,postgresql]`.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from api import wait_for_port
from sqlalchemy import (
    ColumnElement,
    DateTime,
    Executable,
    Table,
    bindparam,
    case,
    insert,
    literal,
    literal_column,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import create_async_engine
from throughput import free_port

from router_core.models import ChatRequest, Message
from storage.connections import connect_redis
from storage.jobs import NewJob
from storage.settings import Settings
from storage.sql.schema import attempts, batches, jobs, ledger, truncate_all
from storage.sql.store import Store

GOAL_MS = 300.0  # issue 16: a 100,000-job batch renders its page in under 300 ms
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/routeq_bench_ui"
TENANT = "bench"

# (deployment, provider, model, cost of one answer in USD): five of the demo catalog's.
DEPLOYMENTS = (
    ("gpt-4.1-nano", "openai", "gpt-4.1-nano", Decimal("0.000041")),
    ("gpt-4o-mini", "openai", "gpt-4o-mini", Decimal("0.000078")),
    ("claude-haiku-4-5", "anthropic", "claude-haiku-4-5", Decimal("0.000530")),
    ("gemini-2.0-flash", "google", "gemini-2.0-flash", Decimal("0.000052")),
    ("mistral-small", "mistral", "mistral-small-latest", Decimal("0.000036")),
)
# One job in 25 fails; the reason is one of three, by seq % 75 (7, 32, 57).
FAILURES = (
    ("AllAttemptsFailedError", "every deployment failed: 500 Internal Server Error (3 attempts)"),
    ("BudgetExceededError", "user budget of $5.00 exceeded: $5.0000 spent, $0.0012 needed"),
    ("NoRouteError", "no deployment has a context window of 182,000 tokens"),
)
_USAGE = '{"prompt_tokens": 48, "completion_tokens": 136, "total_tokens": 184}'
_ANSWER = (
    "A message queue decouples producers from consumers: work is accepted at once, and workers "
    "take it at their own pace, retrying what failed without the caller waiting. "
)


def _requests() -> list[ChatRequest]:
    """A few request shapes, reused: short prompts, a system prompt, routing preferences."""
    return [
        ChatRequest(
            messages=[Message(role="user", content="Summarise: the quick brown fox jumps over a dog")]
        ),
        ChatRequest(
            messages=[
                Message(role="system", content="Answer in one sentence."),
                Message(role="user", content="Classify the sentiment of: routing prompts is fun"),
            ],
            max_tokens=200,
        ),
        ChatRequest.model_validate(
            {
                "messages": [{"role": "user", "content": "Translate 'queue' into French"}],
                "preferences": {"strategy": "cost", "min_quality": 0.6},
                "metadata": {"team": "search"},
            }
        ),
    ]


# --- seeding ------------------------------------------------------------------------------------


async def seed(store: Store, *, tenant: str, n: int) -> str:
    """A finished batch of `n` jobs for `tenant`; returns its id."""
    shapes = _requests()
    items = [NewJob(f"line-{i + 1}", shapes[i % len(shapes)]) for i in range(n)]
    created = await store.batches.create(items, tenant=tenant, user_id="u1", name="bench-100k.jsonl")
    now = datetime.now(UTC)
    async with store.engine.begin() as conn:
        for statement in _finishing(created.batch_id, now, store.engine.dialect.name):
            await conn.execute(statement)
    return created.batch_id


def _finishing(batch_id: str, now: datetime, dialect: str) -> list[Executable]:
    """The statements that finish every job of the batch and write its attempts and ledger rows."""
    mine = jobs.c.batch_id == batch_id
    seq = jobs.c.seq
    when = bindparam("now", value=now, type_=DateTime(timezone=True))
    statements: list[Executable] = []
    for i, (deployment, _provider, model, cost) in enumerate(DEPLOYMENTS):
        statements.append(
            update(jobs)
            .where(mine & (seq % len(DEPLOYMENTS) == i))
            .values(
                status="succeeded",
                run=1,
                starts=1,
                worker="bench-worker",
                deployment=deployment,
                model=model,
                cost_usd=literal(cost) * (1 + seq % 7),
                latency_ms=150.0 + (seq * 37) % 1900,
                attempt_count=case((seq % 10 == 3, 2), else_=1),
                failovers=case((seq % 10 == 3, 1), else_=0),
                result={
                    "content": _ANSWER,
                    "finish_reason": "stop",
                    "usage": {"prompt_tokens": 48, "completion_tokens": 136},
                    "simulated": True,
                },
                started_at=when,
                finished_at=when,
            )
        )
    for k, (code, message) in enumerate(FAILURES):
        statements.append(
            update(jobs)
            .where(mine & (seq % 75 == 7 + 25 * k))
            .values(
                status="failed",
                deployment=None,
                model=None,
                cost_usd=0,
                result=None,
                attempt_count=3,
                failovers=2,
                error={"type": code, "message": message},
            )
        )
    statements += _attempt_rows(mine, when)
    statements.append(_ledger_rows(mine, when, dialect))
    return statements


def _provider_of(deployment: ColumnElement[Any]) -> ColumnElement[Any]:
    return case({d: p for d, p, _, _ in DEPLOYMENTS}, value=deployment, else_="openai")


def _copied(table: Table, values: dict[str, Any], where: ColumnElement[bool]) -> Executable:
    """INSERT INTO `table` one row per job `where` selects: column -> an expression or a constant."""
    exprs = [v if isinstance(v, ColumnElement) else literal(v) for v in values.values()]
    return insert(table).from_select(list(values), select(*exprs).where(where))


def _attempt_rows(mine: ColumnElement[bool], when: ColumnElement[Any]) -> list[Executable]:
    """Every provider call: the answering one, a failed one before each failover, and three failed
    calls for each failed job."""
    succeeded = mine & (jobs.c.status == "succeeded")
    common = {"job_id": jobs.c.id, "run": 1, "wait_ms": 0.0, "simulated": True, "created_at": when}
    answered = common | {
        "attempt_no": jobs.c.attempt_count,
        "deployment": jobs.c.deployment,
        "provider": _provider_of(jobs.c.deployment),
        "model": jobs.c.model,
        "outcome": "success",
        "status_code": 200,
        "input_tokens": 48,
        "output_tokens": 136,
        "latency_ms": jobs.c.latency_ms,
    }
    refused = common | {"outcome": "error", "error_class": "ServerError", "status_code": 500}
    statements = [
        _copied(attempts, answered, succeeded),
        _copied(
            attempts,
            refused
            | {"attempt_no": 1, "deployment": "mistral-large", "provider": "mistral", "latency_ms": 2100.0}
            | {"model": "mistral-large-latest"},
            succeeded & (jobs.c.failovers == 1),
        ),
    ]
    for attempt_no in (1, 2, 3):
        deployment, provider, model, _ = DEPLOYMENTS[attempt_no]
        row = {"attempt_no": attempt_no, "deployment": deployment, "provider": provider, "model": model}
        statements.append(
            _copied(attempts, refused | row | {"latency_ms": 900.0}, mine & (jobs.c.status == "failed"))
        )
    return statements


def _ledger_rows(mine: ColumnElement[bool], when: ColumnElement[Any], dialect: str) -> Executable:
    """One charge per succeeded job (the answering call)."""
    usage = literal_column(f"'{_USAGE}'::json") if dialect == "postgresql" else literal(_USAGE)
    row = {
        "job_id": jobs.c.id,
        "run": 1,
        "attempt_no": jobs.c.attempt_count,
        "batch_id": jobs.c.batch_id,
        "tenant": jobs.c.tenant,
        "user_id": jobs.c.user_id,
        "deployment": jobs.c.deployment,
        "provider": _provider_of(jobs.c.deployment),
        "model": jobs.c.model,
        "cost_usd": jobs.c.cost_usd,
        "usage": usage,
        "simulated": True,
        "estimated": False,
        "created_at": when,
    }
    return _copied(ledger, row, mine & (jobs.c.status == "succeeded"))


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Timings:
    store: str
    jobs: int
    seed_s: float
    page_ms: list[float]
    next_ms: list[float]


class Browser:
    """One keep-alive HTTP connection to the dashboard with a session cookie, as a browser would."""

    def __init__(self, port: int) -> None:
        self.origin = f"http://127.0.0.1:{port}"
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookie = ""

    def sign_in(self, api_key: str) -> None:
        body = urlencode({"api_key": api_key, "next": "/ui"})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": self.origin}
        self.conn.request("POST", "/ui/login", body, headers)
        reply = self.conn.getresponse()
        reply.read()
        session = re.search(r"routeq_session=([^;]+)", reply.getheader("set-cookie") or "")
        if reply.status != 303 or session is None:
            raise SystemExit(f"sign-in failed: {reply.status} {reply.reason}")
        self.cookie = f"routeq_session={session.group(1)}"

    def get(self, path: str) -> tuple[float, str]:
        """GET `path`; returns the milliseconds until the whole body arrived, and the body."""
        started = time.perf_counter()
        self.conn.request("GET", path, headers={"Cookie": self.cookie})
        reply = self.conn.getresponse()
        body = reply.read().decode()
        elapsed = (time.perf_counter() - started) * 1000
        if reply.status != 200:
            raise SystemExit(f"GET {path}: {reply.status} {reply.reason}\n{body[:500]}")
        return elapsed, body

    def close(self) -> None:
        self.conn.close()


def _checked(body: str, total: int) -> str:
    """The batch page's a#next-page link; exits if the page does not show the batch's total."""
    shown = re.search(r'id="count-total"[^>]*>\s*([\d,\s]+)<', body)
    if shown is None or int(re.sub(r"\D", "", shown.group(1))) != total:
        raise SystemExit(f"the batch page does not show #count-total {total}")
    link = re.search(r'<a\b[^>]*\bid="next-page"[^>]*>', body)
    href = re.search(r'href="([^"]+)"', link.group(0)) if link else None
    if href is None:
        raise SystemExit("the batch page has no a#next-page link")
    return href.group(1).replace("&amp;", "&")


def _serve(redis_url: str, database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ROUTEQ_REDIS_URL": redis_url,
        "ROUTEQ_DATABASE_URL": database_url,
        "ROUTEQ_SIMULATE": "always",
        "ROUTEQ_API_DEV_MODE": "false",
    }
    routeq = Path(sys.executable).with_name("routeq")
    return subprocess.Popen(
        [str(routeq), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def measure(label: str, database_url: str, args: argparse.Namespace) -> list[Timings]:
    """Seed (or reuse) the store, serve it, and time its pages in each state of the batch.

    First with every job finished but the batch not yet marked complete (as a running batch, its
    figures are aggregated over its 100,000 rows on every view); on PostgreSQL again after VACUUM
    ANALYZE (what autovacuum soon does: index-only scans need the visibility map); then once it
    is marked complete (an ended batch's figures are computed once and kept)."""
    batch_id, secret, seed_s = await _prepared(label, database_url, args)
    redis = await connect_redis(Settings(_env_file=None, redis_url=args.redis_url))
    await redis.flushdb()
    port = free_port()
    server = _serve(args.redis_url, database_url, port)
    browser = Browser(port)
    timings: list[Timings] = []
    try:
        await wait_for_port(port, server, "routeq serve")
        browser.sign_in(secret)
        timings.append(_time_pages(browser, f"{label}, running", batch_id, seed_s, args))
        if database_url.startswith("postgresql"):
            await _maintain(database_url, "VACUUM ANALYZE jobs, ledger, attempts, batches")
            timings.append(_time_pages(browser, f"{label}, running, vacuumed", batch_id, seed_s, args))
        await _maintain(
            database_url, f"UPDATE batches SET completed_at = CURRENT_TIMESTAMP WHERE id = '{batch_id}'"
        )
        timings.append(_time_pages(browser, f"{label}, ended", batch_id, seed_s, args))
    finally:
        browser.close()
        server.terminate()
        server.wait(30)
        await redis.flushdb()
        await redis.aclose()
    return timings


def _time_pages(
    browser: Browser, label: str, batch_id: str, seed_s: float, args: argparse.Namespace
) -> Timings:
    page = f"/ui/batches/{batch_id}"
    for _ in range(3):  # warm-up: connections, template compilation, caches
        _, body = browser.get(page)
    next_page = _checked(body, args.jobs)
    page_ms = [browser.get(page)[0] for _ in range(args.requests)]
    next_ms = [browser.get(next_page)[0] for _ in range(args.requests)]
    return Timings(label, args.jobs, seed_s, page_ms, next_ms)


async def _prepared(label: str, database_url: str, args: argparse.Namespace) -> tuple[str, str, float]:
    """The measured batch's id (seeded now, or found with --reuse), a key of its tenant, and the
    seconds seeding took."""
    postgres = database_url.startswith("postgresql")
    if postgres:
        await _create_database(database_url)
    store = await Store.open(database_url)
    try:
        batch_id = await _existing(store, args.jobs) if args.reuse else None
        seed_s = 0.0
        if batch_id is None:
            if postgres:
                async with store.engine.begin() as conn:
                    await conn.execute(truncate_all())
            started = time.perf_counter()
            batch_id = await seed(store, tenant=TENANT, n=args.jobs)
            if args.other_jobs:
                await seed(store, tenant="other", n=args.other_jobs)
            if postgres:
                async with store.engine.begin() as conn:
                    await conn.execute(text("ANALYZE"))
            seed_s = time.perf_counter() - started
            print(
                f"{label}: seeded {args.jobs:,} jobs (+{args.other_jobs:,} another tenant's) "
                f"in {seed_s:.1f} s"
            )
        else:
            print(f"{label}: reusing batch {batch_id}")
            async with store.engine.begin() as conn:  # not ended again
                await conn.execute(update(batches).where(batches.c.id == batch_id).values(completed_at=None))
        _, secret = await store.api_keys.create(tenant=TENANT, user_id="u1")
    finally:
        await store.close()
    return batch_id, secret, seed_s


async def _existing(store: Store, n: int) -> str | None:
    """The bench tenant's batch of `n` jobs left by an earlier run, if there is one."""
    query = select(batches.c.id).where((batches.c.tenant == TENANT) & (batches.c.total == n))
    async with store.engine.connect() as conn:
        return (await conn.execute(query)).scalars().first()


async def _maintain(database_url: str, statement: str) -> None:
    """Run one statement outside a transaction (VACUUM needs that)."""
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def _create_database(database_url: str) -> None:
    """CREATE DATABASE for the URL's database unless it exists (connected to `postgres`)."""
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415 - only for PostgreSQL

    url = make_url(database_url)
    server = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(server)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database):
            await conn.execute(f'CREATE DATABASE "{url.database}"')
    finally:
        await conn.close()


def _quantiles(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=20)[18]


def report(timings: list[Timings]) -> bool:
    """Print the figures; True when every batch page's median met the goal."""
    met_all = True
    print(f"GET /ui/batches/{{id}} of a {timings[0].jobs:,}-job batch, signed in, one keep-alive connection:")
    for t in timings:
        median, p95 = _quantiles(t.page_ms)
        next_median, next_p95 = _quantiles(t.next_ms)
        met = median <= GOAL_MS
        met_all &= met
        print(f"   {t.store}:")
        print(
            f"      batch page   median {median:6.1f} ms   p95 {p95:6.1f} ms   "
            f"(goal median <= {GOAL_MS:.0f} ms: {'met' if met else 'NOT met'})"
        )
        print(
            f"      jobs page 2  median {next_median:6.1f} ms   p95 {next_p95:6.1f} ms   "
            "(a#next-page: keyset)"
        )
    return met_all


async def run(args: argparse.Namespace) -> bool:
    timings: list[Timings] = []
    with tempfile.TemporaryDirectory(prefix="routeq-ui-bench-") as tmp:
        for name in args.stores.split(","):
            if name == "sqlite":
                path = args.sqlite_path or f"{tmp}/bench.db"
                timings += await measure("SQLite", f"sqlite+aiosqlite:///{path}", args)
            elif name == "postgresql":
                timings += await measure("PostgreSQL", args.database_url, args)
            else:
                raise SystemExit(f"--stores: unknown store {name!r} (sqlite, postgresql)")
    return report(timings)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000, help="Jobs in the measured batch.")
    parser.add_argument("--other-jobs", type=int, default=20_000, help="Jobs in another tenant's batch.")
    parser.add_argument("--requests", type=int, default=30, help="Timed requests of each page.")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--database-url", default=os.environ.get("ROUTEQ_BENCH_DATABASE_URL", DEFAULT_PG_URL))
    parser.add_argument("--redis-url", default=os.environ.get("ROUTEQ_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--sqlite-path", default=None, help="The SQLite file (default: a temporary one).")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Measure the batch an earlier run seeded, if the store holds one.",
    )
    args = parser.parse_args()
    if args.requests < 2:
        parser.error("--requests: at least 2 (a p95 needs them)")
    if not asyncio.run(run(args)):
        sys.exit(1)


if __name__ == "__main__":
    main()
