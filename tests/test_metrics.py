"""Prometheus metrics: the shared `Metrics` families, the worker's metrics port and its wiring.

The Redis-backed parts run on both backends (fakeredis + SQLite, real Redis + PostgreSQL in CI).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import httpx2
import prometheus_client
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from producer.client import Client
from router_core import Catalog, FakeClock, Router
from router_core.errors import AllAttemptsFailedError, CapacityExhaustedError
from router_core.fleet import BreakerPolicy, CallOutcome, Forced
from router_core.models import (
    Attempt,
    AttemptOutcome,
    ChatRequest,
    CompletionResult,
    Message,
    Usage,
    deployment_switches,
)
from storage import keys
from storage.bus.events import EventBus
from storage.fleet.budgets import Budgets
from storage.fleet.state import RedisFleetState
from storage.jobs import NewJob
from storage.metrics import CONTENT_TYPE, Metrics
from storage.settings import Settings
from tests.backends import Backend, open_backend
from workers.context import WorkerContext
from workers.metrics_server import MetricsServer, serve_worker_metrics
from workers.runner import JobDeferred, JobRunner


def attempt(deployment: str, ok: bool, latency_ms: float, cost_usd: float = 0.0, **extra: Any) -> Attempt:
    return Attempt(
        deployment=deployment,
        provider=deployment.split("-", maxsplit=1)[0],
        model=f"{deployment}-model",
        outcome=AttemptOutcome.SUCCESS if ok else AttemptOutcome.ERROR,
        latency_ms=latency_ms,
        cost_usd=cost_usd,
        **extra,
    )


def lines(metrics: Metrics) -> list[str]:
    return metrics.render().decode().splitlines()


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, for every sample line of a scrape."""
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: float(value) for key, value in pairs}


def chat(text: str) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)])


# -- Metrics ---------------------------------------------------------------------------------------


def test_observe_job_counts_the_run_and_each_call() -> None:
    metrics = Metrics()
    tried = [
        attempt("cheap-a", ok=False, latency_ms=200.0),
        attempt(
            "fast-b",
            ok=True,
            latency_ms=1500.0,
            cost_usd=0.25,
            usage=Usage(input_tokens=100, output_tokens=20),
        ),
    ]
    metrics.observe_job("succeeded", tried, failovers=1, latency_ms=1700.0)
    metrics.observe_job(
        "deferred", [attempt("cheap-a", ok=False, latency_ms=50.0)], failovers=0, latency_ms=None
    )

    rendered = lines(metrics)
    for expected in (
        'routeq_jobs_total{status="succeeded"} 1.0',
        'routeq_jobs_total{status="deferred"} 1.0',
        'routeq_provider_requests_total{deployment="cheap-a",outcome="error"} 2.0',
        'routeq_provider_requests_total{deployment="fast-b",outcome="success"} 1.0',
        "routeq_failovers_total 1.0",
        'routeq_cost_usd_total{deployment="fast-b"} 0.25',
        'routeq_cost_usd_total{deployment="cheap-a"} 0.0',
        'routeq_tokens_total{deployment="fast-b",direction="input"} 100.0',
        'routeq_tokens_total{deployment="fast-b",direction="output"} 20.0',
        'routeq_provider_latency_seconds_bucket{deployment="fast-b",le="1.0"} 0.0',
        'routeq_provider_latency_seconds_bucket{deployment="fast-b",le="2.5"} 1.0',
        'routeq_provider_latency_seconds_sum{deployment="fast-b"} 1.5',
        'routeq_provider_latency_seconds_count{deployment="cheap-a"} 2.0',
        'routeq_provider_latency_seconds_bucket{deployment="cheap-a",le="0.05"} 1.0',
        'routeq_provider_latency_seconds_bucket{deployment="cheap-a",le="120.0"} 2.0',
        "routeq_job_latency_seconds_count 1.0",
        "routeq_job_latency_seconds_sum 1.7",
    ):
        assert expected in rendered, expected
    assert not any(line.startswith('routeq_tokens_total{deployment="cheap-a"') for line in rendered)


def test_observe_http() -> None:
    metrics = Metrics()
    metrics.observe_http("GET", "/v1/jobs/{job_id}", 200, 0.02)
    metrics.observe_http("GET", "/v1/jobs/{job_id}", 404, 0.001)
    rendered = lines(metrics)
    for expected in (
        'routeq_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0',
        'routeq_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0',
        'routeq_http_request_duration_seconds_bucket{le="0.01",method="GET",route="/v1/jobs/{job_id}"} 1.0',
        'routeq_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}"} 2.0',
    ):
        assert expected in rendered, expected


def test_observe_cache_counts_hits_by_kind_misses_and_saved_dollars() -> None:
    metrics = Metrics()
    metrics.observe_cache(True, None, 0.25)
    metrics.observe_cache(True, 0.97, 0.5)
    metrics.observe_cache(True, None, 0.25)
    metrics.observe_cache(False, None, 0.0)
    rendered = lines(metrics)
    for expected in (
        'routeq_cache_hits_total{kind="exact"} 2.0',
        'routeq_cache_hits_total{kind="semantic"} 1.0',
        "routeq_cache_misses_total 1.0",
        "routeq_cache_saved_usd_total 1.0",
    ):
        assert expected in rendered, expected


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.observe_job("failed", [], failovers=0, latency_ms=None)
    assert 'routeq_jobs_total{status="failed"} 1.0' in lines(first)
    assert not any(line.startswith("routeq_jobs_total{") for line in lines(second))
    assert prometheus_client.REGISTRY.get_sample_value("routeq_jobs_total", {"status": "failed"}) is None


def test_deployment_switches_matches_completion_failovers() -> None:
    tried = [attempt(d, ok=False, latency_ms=1.0) for d in ("a", "a", "b", "a", "c", "c")]
    assert deployment_switches(tried) == 3
    assert deployment_switches([]) == 0


async def test_refresh_reads_queue_workers_and_breakers(backend: Backend, trio: Catalog) -> None:
    redis = await backend.redis()
    clock = FakeClock()
    stats = RedisFleetState(redis, breaker=BreakerPolicy(failure_threshold=1, cooldown_s=30.0), clock=clock)
    cheap, smart = trio["cheap-a"], trio["smart-c"]
    failed = await stats.admit(cheap, 10)
    await stats.release(cheap, failed, CallOutcome.FAILURE, 100.0, 10)  # trips the breaker
    await stats.force("fast-b", Forced.DOWN)
    await stats.force("smart-c", Forced.UP)
    assert (await stats.admit(smart, 10)).admitted  # still in flight
    await redis.zadd(backend.settings.queue_name, {"job-1": 1, "job-2": 2, "job-3": 3})
    # Two live workers; one killed 10 minutes ago (never unregistered) and one unreadable entry.
    now = time.time()
    seen = {"w1": now - 1, "w2": now - 3 * 15 + 5, "dead": now - 600}
    await redis.hset(keys.WORKERS, mapping={w: json.dumps({"pid": 1, "seen": t}) for w, t in seen.items()})  # type: ignore[misc]
    await redis.hset(keys.WORKERS, "junk", "not json")  # type: ignore[misc]

    metrics = Metrics()
    await metrics.refresh(redis, stats, list(trio), backend.settings.queue_name, job_lease_s=15.0)
    # Only workers seen within three leases count; the others' entries are gone.
    assert sorted(map(bytes.decode, await redis.hkeys(keys.WORKERS))) == ["w1", "w2"]  # type: ignore[misc]
    rendered = lines(metrics)
    for expected in (
        "routeq_queue_depth 3.0",
        "routeq_workers 2.0",
        'routeq_circuit_state{deployment="cheap-a"} 2.0',
        'routeq_circuit_state{deployment="fast-b"} 2.0',
        'routeq_circuit_state{deployment="smart-c"} 0.0',
        'routeq_deployment_forced{deployment="cheap-a"} 0.0',
        'routeq_deployment_forced{deployment="fast-b"} -1.0',
        'routeq_deployment_forced{deployment="smart-c"} 1.0',
        'routeq_inflight{deployment="cheap-a"} 0.0',
        'routeq_inflight{deployment="smart-c"} 1.0',
        'routeq_success_rate{deployment="cheap-a"} 0.8',
        'routeq_success_rate{deployment="smart-c"} 1.0',
    ):
        assert expected in rendered, expected

    clock.advance(30.0)  # the cooldown is over: the open circuit lets a probe through
    await redis.zrem(backend.settings.queue_name, "job-1")
    await metrics.refresh(redis, stats, list(trio), backend.settings.queue_name, job_lease_s=15.0)
    assert 'routeq_circuit_state{deployment="cheap-a"} 1.0' in lines(metrics)
    assert "routeq_queue_depth 2.0" in lines(metrics)


# -- JobRunner -------------------------------------------------------------------------------------


class _Scripted:
    """A router that raises the scripted errors, one per call."""

    def __init__(self, errors: Sequence[Exception]) -> None:
        self._errors = list(errors)

    async def plan(self, request: ChatRequest) -> None:
        return None

    async def complete(self, request: ChatRequest, **route: Any) -> CompletionResult:
        raise self._errors.pop(0)


async def test_runner_counts_deferrals_failures_and_cancellations(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    full = [attempt("cheap-a", ok=False, latency_ms=30.0)]
    tried = [attempt("cheap-a", ok=False, latency_ms=30.0), attempt("fast-b", ok=False, latency_ms=60.0)]
    router = _Scripted(
        [
            CapacityExhaustedError("all full", full, retry_after_s=1.0),
            AllAttemptsFailedError("all failed", tried),
        ]
    )
    metrics = Metrics()
    runner = JobRunner(
        cast(Router, router),
        backend.store,
        EventBus(await backend.redis(), retention_s=60),
        worker_id="w1",
        budgets=Budgets(await backend.redis()),
        metrics=metrics,
    )
    job_id = await client.submit(chat("hello"))
    with pytest.raises(JobDeferred):
        await runner.run(job_id, run=1)
    assert await runner.run(job_id, run=2) == "failed"
    cancelled = await client.submit(chat("never mind"))
    await client.cancel((await client.get(cancelled)).batch_id, job_id=cancelled)
    assert await runner.run(cancelled, run=1) == "cancelled"

    rendered = lines(metrics)
    for expected in (
        'routeq_jobs_total{status="deferred"} 1.0',
        'routeq_jobs_total{status="failed"} 1.0',
        'routeq_jobs_total{status="cancelled"} 1.0',
        'routeq_provider_requests_total{deployment="cheap-a",outcome="error"} 2.0',
        'routeq_provider_requests_total{deployment="fast-b",outcome="error"} 1.0',
        "routeq_failovers_total 1.0",
        "routeq_job_latency_seconds_count 0.0",
    ):
        assert expected in rendered, expected


# -- the metrics port ------------------------------------------------------------------------------


async def test_metrics_port_serves_a_real_scrape() -> None:
    metrics = Metrics()
    metrics.observe_job("succeeded", [], failovers=0, latency_ms=250.0)
    refreshed: list[int] = []

    async def refresh() -> None:
        refreshed.append(1)
        metrics.queue_depth.set(7)

    async with (
        MetricsServer(metrics, refresh, host="127.0.0.1", port=0) as server,
        httpx2.AsyncClient() as http,
    ):
        assert server.port > 0
        response = await http.get(f"http://127.0.0.1:{server.port}/metrics")
        assert response.status_code == 200
        assert response.http_version == "HTTP/1.1"
        assert response.headers["content-type"] == CONTENT_TYPE
        assert response.headers["connection"] == "close"
        assert int(response.headers["content-length"]) == len(response.content)
        scraped = samples(response.text)
        assert scraped['routeq_jobs_total{status="succeeded"}'] == 1.0
        assert scraped["routeq_queue_depth"] == 7.0
        assert refreshed == [1]

        missing = await http.get(f"http://127.0.0.1:{server.port}/")
        assert missing.status_code == 404
        posted = await http.post(f"http://127.0.0.1:{server.port}/metrics")
        assert (posted.status_code, posted.headers["allow"]) == (405, "GET")
        assert refreshed == [1]  # only real scrapes refresh
        with_query = await http.get(f"http://127.0.0.1:{server.port}/metrics?x=1")
        assert with_query.status_code == 200


async def _raw(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if half_close:
        writer.write_eof()
    try:
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_metrics_port_survives_bad_clients() -> None:
    metrics = Metrics()
    async with MetricsServer(metrics, host="127.0.0.1", port=0, read_timeout_s=0.05) as server:
        assert (await _raw(server.port, b"\x00\xffgarbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await _raw(server.port, b"")).startswith(b"HTTP/1.1 400 ")  # connected, said nothing
        assert (await _raw(server.port, b"GET /metrics HTTP/1.1\r\n", half_close=False)) == b""  # too slow
        answer = await _raw(server.port, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nConnection: close\r\n" in answer


async def test_scrape_during_a_redis_outage_still_serves_the_counters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    metrics.observe_job("failed", [], failovers=0, latency_ms=None)

    async def redis_down() -> None:
        raise RedisConnectionError("Connection refused")

    async def broken() -> None:
        raise RuntimeError("a bug")

    async with httpx2.AsyncClient() as http:
        async with MetricsServer(metrics, redis_down, host="127.0.0.1", port=0) as server:
            with caplog.at_level(logging.WARNING, logger="routeq.worker"):
                response = await http.get(f"http://127.0.0.1:{server.port}/metrics")
        assert response.status_code == 200
        assert samples(response.text)['routeq_jobs_total{status="failed"}'] == 1.0
        assert "Redis unavailable" in caplog.text
        async with MetricsServer(metrics, broken, host="127.0.0.1", port=0) as server:
            assert (await http.get(f"http://127.0.0.1:{server.port}/metrics")).status_code == 500


async def test_a_busy_port_is_a_warning_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    async with MetricsServer(Metrics(), port=0) as holder:
        with caplog.at_level(logging.WARNING, logger="routeq.worker"):
            assert await serve_worker_metrics(Metrics(), None, holder.port) is None
    assert f"worker metrics port {holder.port} unavailable" in caplog.text
    assert "ROUTEQ_WORKER_METRICS_PORT" in caplog.text


def test_metrics_port_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTEQ_WORKER_METRICS_PORT", raising=False)
    assert Settings(_env_file=None).worker_metrics_port == 9101
    for value, port in (("", None), ("  ", None), ("0", 0), ("9200", 9200)):
        monkeypatch.setenv("ROUTEQ_WORKER_METRICS_PORT", value)
        assert Settings(_env_file=None).worker_metrics_port == port


# -- a worker with its metrics port ----------------------------------------------------------------


async def test_burst_worker_serves_its_metrics_while_running(backend: Backend) -> None:
    settings = backend.settings.model_copy(update={"worker_metrics_port": 0})
    backend.settings = settings
    client = Client(await backend.redis(), backend.store, settings)
    await client.submit_batch([NewJob(f"item-{i}", chat(f"hello {i}")) for i in range(12)])
    scraped: list[httpx2.Response] = []
    servers: list[MetricsServer] = []

    async def scrape(context: WorkerContext) -> None:
        # Every job is done, the worker is still up: scrape its port over a real socket.
        server = context.metrics_server
        assert server is not None
        servers.append(server)
        async with httpx2.AsyncClient() as http:
            scraped.append(await http.get(f"http://127.0.0.1:{server.port}/metrics"))

    assert await backend.run_worker(before_shutdown=scrape) == 12

    assert scraped[0].status_code == 200
    values = samples(scraped[0].text)
    assert values['routeq_jobs_total{status="succeeded"}'] == 12.0
    calls = {k: v for k, v in values.items() if k.startswith("routeq_provider_requests_total{")}
    assert sum(calls.values()) == 12.0
    assert all('outcome="success"' in key for key in calls)
    assert values["routeq_job_latency_seconds_count"] == 12.0
    assert values["routeq_failovers_total"] == 0.0
    assert values["routeq_queue_depth"] == 0.0
    assert values["routeq_workers"] == 1.0  # this worker, still registered
    circuits = [values[f'routeq_circuit_state{{deployment="{d}"}}'] for d in ("cheap-a", "fast-b", "smart-c")]
    assert circuits == [0.0, 0.0, 0.0]
    with pytest.raises(httpx2.ConnectError):  # shutdown closed the port
        async with httpx2.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{servers[0].port}/metrics")


async def test_a_worker_counts_cache_hits_misses_and_saved_dollars(tmp_path: Path) -> None:
    async with open_backend("embedded", tmp_path, cache=True, worker_metrics_port=0) as backend:
        client = Client(await backend.redis(), backend.store, backend.settings)
        items = [NewJob(f"item-{i}", chat(f"hello {i % 3}")) for i in range(9)]
        batch_id = await client.submit_batch(items)
        scraped: list[dict[str, float]] = []

        async def scrape(context: WorkerContext) -> None:
            server = context.metrics_server
            assert server is not None
            async with httpx2.AsyncClient() as http:
                scraped.append(samples((await http.get(f"http://127.0.0.1:{server.port}/metrics")).text))

        assert await backend.run_worker(before_shutdown=scrape) == 9
        done = [job async for job in client.results(batch_id)]
        stats = await backend.store.cache.stats(client.tenant)

    values = scraped[0]
    assert values['routeq_cache_hits_total{kind="exact"}'] == stats.hits == 6  # three answers, each 3 times
    assert values["routeq_cache_misses_total"] == stats.misses == 3
    assert values["routeq_cache_saved_usd_total"] == pytest.approx(float(stats.saved_usd))
    assert stats.saved_usd == sum(job.saved_usd or 0 for job in done) > 0


async def test_worker_runs_on_when_its_metrics_port_is_taken(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async with MetricsServer(Metrics(), port=0) as holder:
        backend.settings = backend.settings.model_copy(update={"worker_metrics_port": holder.port})
        client = Client(await backend.redis(), backend.store, backend.settings)
        await client.submit_batch([NewJob(f"item-{i}", chat(f"hello {i}")) for i in range(3)])
        with caplog.at_level(logging.WARNING, logger="routeq.worker"):
            assert await backend.run_worker() == 3
    assert f"worker metrics port {holder.port} unavailable" in caplog.text
