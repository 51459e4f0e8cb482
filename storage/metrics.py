"""Prometheus metrics shared by the workers and the HTTP API (which may not import each other).

Each `Metrics` owns its own `CollectorRegistry`, never prometheus_client's global one, so a process
(or a test) can build as many as it likes. Counters and histograms are fed as work finishes
(`observe_job`, `observe_cache`, `observe_http`); the gauges describe fleet state kept in Redis and
are read again on every scrape (`refresh`), so any worker's metrics port shows the whole fleet's
breakers.

    routeq_jobs_total{status}                          runs finished: succeeded, failed, cancelled, deferred
    routeq_provider_requests_total{deployment,outcome} provider calls: success, error
    routeq_failovers_total                             moves from one deployment to another
    routeq_cost_usd_total{deployment}                  billed cost of the calls
    routeq_tokens_total{deployment,direction}          input, output
    routeq_provider_latency_seconds{deployment}        histogram, per call
    routeq_job_latency_seconds                         histogram, the routed result's latency
    routeq_cache_hits_total{kind}                      jobs served from the response cache: exact, semantic
    routeq_cache_misses_total                          jobs that looked in the cache, then called
    routeq_cache_saved_usd_total                       what cache hits did not pay again, USD
    routeq_queue_depth                                 gauge: jobs queued or running (queue + running set)
    routeq_circuit_state{deployment}                   gauge: 0 closed, 1 half-open, 2 open
    routeq_deployment_forced{deployment}               gauge: -1 forced down, 1 forced up, 0 auto
    routeq_inflight{deployment}                        gauge: calls in flight, fleet-wide
    routeq_success_rate{deployment}                    gauge: the live success-rate EWMA
    routeq_workers                                     gauge: workers seen in the last 3 job leases
    routeq_budget_spent_usd{scope}                     gauge: settled spend of each scope with a cap set
    routeq_budget_reserved_usd{scope}                  gauge: held for its calls in flight
    routeq_budget_cap_usd{scope}                       gauge: its cap
    routeq_budget_used_ratio{scope}                    gauge: (spent + reserved) / cap; 1 = no room left
    routeq_http_requests_total{method,route,status}    the HTTP API's requests
    routeq_http_request_duration_seconds{method,route} histogram
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.asyncio import Redis

from router_core.fleet import CircuitState, FleetState, Forced
from router_core.models import Attempt
from storage import keys
from storage.bus.registry import queue_stats
from storage.fleet.budgets import Budgets, ScopeUsage, readable_scope

__all__ = ["CONTENT_TYPE", "LLM_LATENCY_BUCKETS", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the Content-Type of `Metrics.render()`

# LLM calls take from tens of milliseconds (a cached short answer) to minutes (long generations).
LLM_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
_FORCED_VALUE = {Forced.DOWN: -1, None: 0, Forced.UP: 1}


# KEYS[1]: routeq:workers. ARGV[1]: how old (s) a worker's `seen` may be. Deletes the entries seen
# longer ago (or unreadable) and returns how many are left. Age is taken on the Redis server's
# clock against the `seen` the worker wrote on its own: three leases (45 s by default) leave room
# for skewed clocks, and a live worker deleted by mistake writes itself back at its next renewal.
_LIVE_WORKERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local live = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local ok, record = pcall(cjson.decode, entries[i + 1])
  local seen = nil
  if ok and type(record) == 'table' then seen = tonumber(record.seen) end
  if seen and now - seen <= tonumber(ARGV[1]) then
    live = live + 1
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return live
"""


class Metrics:
    """routeq's Prometheus families in a registry of their own.

    Args:
        registry: where to register; None makes a new one (the usual case).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = reg = registry or CollectorRegistry()
        self._children: dict[tuple[object, ...], Any] = {}
        self.jobs = Counter("routeq_jobs_total", "Job runs finished, by status.", ["status"], registry=reg)
        self.provider_requests = Counter(
            "routeq_provider_requests_total",
            "Provider calls, by outcome.",
            ["deployment", "outcome"],
            registry=reg,
        )
        self.failovers = Counter(
            "routeq_failovers_total", "Moves from one deployment to another.", registry=reg
        )
        self.cost = Counter(
            "routeq_cost_usd_total", "Billed cost of provider calls, USD.", ["deployment"], registry=reg
        )
        self.tokens = Counter(
            "routeq_tokens_total", "Tokens of provider calls.", ["deployment", "direction"], registry=reg
        )
        self.provider_latency = Histogram(
            "routeq_provider_latency_seconds",
            "Latency of each provider call.",
            ["deployment"],
            buckets=LLM_LATENCY_BUCKETS,
            registry=reg,
        )
        self.job_latency = Histogram(
            "routeq_job_latency_seconds",
            "Latency of routed results.",
            buckets=LLM_LATENCY_BUCKETS,
            registry=reg,
        )
        self.cache_hits = Counter(
            "routeq_cache_hits_total",
            "Jobs served from the response cache, by kind: exact, semantic.",
            ["kind"],
            registry=reg,
        )
        self.cache_misses = Counter(
            "routeq_cache_misses_total", "Jobs that looked in the response cache and called.", registry=reg
        )
        self.cache_saved = Counter(
            "routeq_cache_saved_usd_total", "What response-cache hits did not pay again, USD.", registry=reg
        )
        self.queue_depth = Gauge(
            "routeq_queue_depth", "Jobs in the arq queue, running ones included.", registry=reg
        )
        self.circuit_state = Gauge(
            "routeq_circuit_state", "Breaker: 0 closed, 1 half-open, 2 open.", ["deployment"], registry=reg
        )
        self.forced = Gauge(
            "routeq_deployment_forced",
            "Operator override: -1 down, 1 up, 0 auto.",
            ["deployment"],
            registry=reg,
        )
        self.inflight = Gauge("routeq_inflight", "Calls in flight, fleet-wide.", ["deployment"], registry=reg)
        self.success_rate = Gauge(
            "routeq_success_rate", "Live success-rate EWMA.", ["deployment"], registry=reg
        )
        self.workers = Gauge("routeq_workers", "Workers registered in Redis.", registry=reg)
        # Scopes with a cap an operator set (`routeq budget set`, `keys create --budget`): a user under
        # the default cap alone is not listed (see Budgets.capped_usage).
        self.budget_spent = Gauge(
            "routeq_budget_spent_usd",
            "Settled spend of each capped budget scope, USD.",
            ["scope"],
            registry=reg,
        )
        self.budget_reserved = Gauge(
            "routeq_budget_reserved_usd",
            "Budget held for calls in flight, per capped scope, USD.",
            ["scope"],
            registry=reg,
        )
        self.budget_cap = Gauge(
            "routeq_budget_cap_usd", "Cap of each capped scope, USD.", ["scope"], registry=reg
        )
        self.budget_used = Gauge(
            "routeq_budget_used_ratio",
            "(spent + reserved) / cap of each capped scope; 1 means no room left.",
            ["scope"],
            registry=reg,
        )
        self.http_requests = Counter(
            "routeq_http_requests_total", "HTTP API requests.", ["method", "route", "status"], registry=reg
        )
        self.http_duration = Histogram(
            "routeq_http_request_duration_seconds",
            "HTTP API request duration.",
            ["method", "route"],
            buckets=_HTTP_BUCKETS,
            registry=reg,
        )

    def observe_job(
        self, status: str, attempts: Sequence[Attempt], failovers: int, latency_ms: float | None
    ) -> None:
        """Count one finished (or deferred) run and every provider call it made."""
        self._child(self.jobs, status).inc()
        for attempt in attempts:
            dep = attempt.deployment
            self._child(self.provider_requests, dep, attempt.outcome.value).inc()
            self._child(self.provider_latency, dep).observe(attempt.latency_ms / 1000)
            self._child(self.cost, dep).inc(attempt.cost_usd)
            if attempt.usage is not None:
                self._child(self.tokens, dep, "input").inc(attempt.usage.input_tokens)
                self._child(self.tokens, dep, "output").inc(attempt.usage.output_tokens)
        if failovers > 0:
            self.failovers.inc(failovers)
        if latency_ms is not None:
            self.job_latency.observe(latency_ms / 1000)

    def _child(self, family: Counter | Histogram, *labels: str) -> Any:
        """`family.labels(*labels)`, kept: `labels` takes a lock and checks its values on each call,
        and a worker counts half a dozen children a job (the API two a request). The label values
        come from the catalog, the outcome enums and the API's route templates, and the family keeps
        every child it made anyway; these families are never cleared."""
        key = (family, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def observe_cache(self, hit: bool, similarity: float | None, saved_usd: float) -> None:
        """Count one finished job that used the response cache: a hit (with what it saved) or a miss."""
        if not hit:
            self.cache_misses.inc()
            return
        self._child(self.cache_hits, "exact" if similarity is None else "semantic").inc()
        self.cache_saved.inc(saved_usd)

    def observe_http(self, method: str, route: str, status: int | str, seconds: float) -> None:
        """Count one HTTP API request; `route` is the route template, never the raw path (so the
        children kept are few)."""
        self._child(self.http_requests, method, route, str(status)).inc()
        self._child(self.http_duration, method, route).observe(seconds)

    async def refresh(
        self,
        redis: Redis,
        fleet: FleetState,
        deployment_ids: Sequence[str],
        queue_name: str,
        *,
        job_lease_s: float,
    ) -> None:
        """Read the gauges again from Redis: queue depth, live workers, each deployment's live state,
        the budgets of capped scopes (`Budgets.capped_usage`).

        A worker renews its `seen` in `routeq:workers` with its job leases (every third of
        `job_lease_s`); one not seen for three leases was killed without unregistering, and its
        entry is deleted here instead of being counted.

        Raises:
            redis.exceptions.RedisError: Redis is unreachable; the gauges keep their last values.
        """
        depth = (await queue_stats(redis, queue_name, now_ms=int(time.time() * 1000))).depth
        workers = await redis.register_script(_LIVE_WORKERS)(keys=[keys.WORKERS], args=[3 * job_lease_s])
        snapshot = await fleet.snapshot(deployment_ids)
        budgets = await Budgets(redis).capped_usage()
        self.queue_depth.set(depth)
        self.workers.set(workers)
        self._set_budgets(budgets)
        for dep, live in snapshot.items():
            self.circuit_state.labels(dep).set(_CIRCUIT_VALUE[live.circuit])
            self.forced.labels(dep).set(_FORCED_VALUE[live.forced])
            self.inflight.labels(dep).set(live.in_flight)
            self.success_rate.labels(dep).set(live.success_rate)

    def _set_budgets(self, budgets: Sequence[ScopeUsage]) -> None:
        """Replace the budget gauges at once (no await in between): a removed cap leaves no series."""
        gauges = (self.budget_spent, self.budget_reserved, self.budget_cap, self.budget_used)
        for gauge in gauges:
            gauge.clear()
        for usage in budgets:
            assert usage.cap_usd is not None  # capped_usage lists capped scopes only
            scope = readable_scope(usage.scope)
            used = usage.spent_usd + usage.reserved_usd
            self.budget_spent.labels(scope).set(usage.spent_usd)
            self.budget_reserved.labels(scope).set(usage.reserved_usd)
            self.budget_cap.labels(scope).set(usage.cap_usd)
            # A zero cap has no room at all, whatever it holds.
            self.budget_used.labels(scope).set(used / usage.cap_usd if usage.cap_usd > 0 else 1.0)

    def render(self) -> bytes:
        """The registry in Prometheus text format (serve it with `CONTENT_TYPE`)."""
        return generate_latest(self.registry)
