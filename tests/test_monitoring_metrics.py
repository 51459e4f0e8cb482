"""Every metric the Grafana dashboard and the alert rules use is exported by the real exporters.

Jobs run on a burst worker with its metrics port open (a response cache on, so cache hits happen,
and a budget cap on the submitting user, so budget gauges exist); then the worker's port and the
HTTP API's `/metrics` are scraped over real sockets, as Prometheus scrapes them in compose. Each
name the shipped PromQL selects must be a sample name of those scrapes (a histogram's `_bucket`,
`_sum` and `_count` are sample names of their own, as Prometheus stores them). A misspelt metric in
the dashboard or a rule fails here. Also: the budget gauges' values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer.client import Client
from router_core.models import ChatRequest, Message
from storage.fleet.budgets import Budgets, batch_scope, end_user_scope, tenant_scope, user_scope
from storage.fleet.state import RedisFleetState
from storage.jobs import NewJob
from storage.metrics import Metrics
from tests.api_harness import serve_api
from tests.backends import Backend, open_backend
from tests.monitoring import PROMETHEUS_SERIES, metric_names, shipped_expressions
from workers.context import WorkerContext


def sample_names(exposition: str) -> set[str]:
    """Every series name in a Prometheus text exposition (histograms' _bucket/_sum/_count included)."""
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def missing_metrics(expressions: Iterable[tuple[str, str]], exported: set[str]) -> list[str]:
    """`where: name` for each metric an expression uses that no exporter serves."""
    return [
        f"{where}: {name}"
        for where, expr in expressions
        for name in sorted(metric_names(expr))
        if name not in exported and name not in PROMETHEUS_SERIES
    ]


@pytest.fixture(params=["embedded", "services"])
async def cached_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend(request.param, tmp_path, cache=True, worker_metrics_port=0) as backend:
        yield backend


async def scrape_after_jobs(backend: Backend) -> tuple[str, str]:
    """(worker scrape, API scrape) after 6 jobs (3 prompts twice: 3 cache hits) ran."""
    redis = await backend.redis()
    settings = backend.settings
    await Budgets(redis).set_cap(user_scope(settings.tenant, settings.user), 5.0)
    client = Client(redis, backend.store, settings)
    prompts = [ChatRequest(messages=[Message(role="user", content=f"hello {i % 3}")]) for i in range(6)]
    await client.submit_batch([NewJob(f"item-{i}", prompt) for i, prompt in enumerate(prompts)])
    worker_scrapes: list[str] = []

    async def scrape(context: WorkerContext) -> None:  # every job done, the worker still up
        assert context.metrics_server is not None
        async with httpx2.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{context.metrics_server.port}/metrics")
        assert response.status_code == 200
        worker_scrapes.append(response.text)

    assert await backend.run_worker(before_shutdown=scrape) == 6
    async with serve_api(backend, worker=False) as api, httpx2.AsyncClient() as http:
        assert (await http.get(f"{api.url}/v1/providers")).status_code == 401  # a request to count
        response = await http.get(f"{api.url}/metrics")
        assert response.status_code == 200
    return worker_scrapes[0], response.text


async def test_every_metric_the_dashboard_and_alerts_use_is_exported(cached_backend: Backend) -> None:
    worker, api = await scrape_after_jobs(cached_backend)
    exported = sample_names(worker) | sample_names(api)
    expressions = shipped_expressions()
    assert missing_metrics(expressions, exported) == []

    # The HTTP API's own requests are only in its scrape (job routeq-api); the jobs' counters only in
    # the workers' (job routeq-worker); fleet gauges in both.
    assert "routeq_http_requests_total" in sample_names(api) - sample_names(worker)
    assert "routeq_jobs_total" in sample_names(worker)
    assert "routeq_cache_hits_total" in sample_names(worker)
    for gauge in ("routeq_queue_depth", "routeq_circuit_state", "routeq_budget_used_ratio"):
        assert gauge in sample_names(worker) & sample_names(api), gauge

    # A misspelt name in the dashboard, an alert or a histogram suffix is reported with its place.
    typo = [("panel 'Queue depth'", "max(routeq_queue_dept)")]
    assert missing_metrics(typo, exported) == ["panel 'Queue depth': routeq_queue_dept"]
    wrong_suffix = [("rule X", "rate(routeq_provider_latency_seconds_total[5m])")]
    assert missing_metrics(wrong_suffix, exported) == ["rule X: routeq_provider_latency_seconds_total"]
    bare_histogram = [("panel p95", "histogram_quantile(0.95, rate(routeq_job_latency_seconds[5m]))")]
    assert missing_metrics(bare_histogram, exported) == ["panel p95: routeq_job_latency_seconds"]


async def test_budget_gauges_show_every_capped_scope(backend: Backend) -> None:
    redis = await backend.redis()
    budgets = Budgets(redis)
    ana, acme = user_scope("acme", "ana"), tenant_scope("acme")
    await budgets.set_cap(ana, 2.0)
    await budgets.set_cap(acme, 10.0)
    await budgets.set_cap(end_user_scope("acme", "a/b"), 0.0)
    guard = budgets.guard(job_id="job-1", run=1, tenant="acme", user="ana", batch_id="batch-1")
    assert await guard.reserve(1, "cheap-a", 0.5) is None
    assert await guard.reserve(2, "cheap-a", 0.25) is None
    await budgets.settle("job-1", {"1:1": 0.4})  # attempt 2 still in flight: 0.25 held

    metrics = Metrics()
    fleet = RedisFleetState(redis)
    await metrics.refresh(redis, fleet, [], backend.settings.queue_name, job_lease_s=15.0)
    values = {
        (sample.name, sample.labels["scope"]): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if "scope" in sample.labels
    }
    assert values[("routeq_budget_spent_usd", "user:acme/ana")] == pytest.approx(0.4)
    assert values[("routeq_budget_reserved_usd", "user:acme/ana")] == pytest.approx(0.25)
    assert values[("routeq_budget_cap_usd", "user:acme/ana")] == 2.0
    assert values[("routeq_budget_used_ratio", "user:acme/ana")] == pytest.approx(0.65 / 2.0)
    assert values[("routeq_budget_used_ratio", "tenant:acme")] == pytest.approx(0.65 / 10.0)
    assert values[("routeq_budget_used_ratio", "end_user:acme/a%2Fb")] == 1.0  # a zero cap: no room
    # The batch has no cap an operator set: not listed (its own cap lives in SQL).
    assert not any(scope == "batch:batch-1" for _, scope in values)

    await budgets.set_cap(acme, None)  # a removed cap leaves no stale series behind
    await budgets.set_cap(batch_scope("batch-1"), 1.0)
    await metrics.refresh(redis, fleet, [], backend.settings.queue_name, job_lease_s=15.0)
    rendered = metrics.render().decode()
    assert 'scope="tenant:acme"' not in rendered
    assert 'routeq_budget_used_ratio{scope="batch:batch-1"} 0.65' in rendered
