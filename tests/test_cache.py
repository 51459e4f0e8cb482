"""The response cache end to end: repeats make one call, re-runs make none, hits obey constraints.

Every pipeline test runs on both backends (fakeredis + SQLite, real Redis + PostgreSQL in CI) with
the cache on (`ROUTEQ_CACHE` is off for the rest of the suite: see tests/conftest.py). Provider
calls are counted as the sim counts the requests it served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from producer.client import Client
from router_core.cache import CacheMode, CachePolicy, CachePreference, cache_key, decide, semantic_group
from router_core.models import ChatRequest, Message, Preferences
from router_core.providers import sim_world_for
from router_core.sim.world import SimWorld
from storage import keys
from storage.bus.relay import StreamRelay
from storage.fleet.budgets import Budgets
from storage.fleet.flights import Entry, Flights
from storage.jobs import JobRecord, JobStatus, NewJob, StartedJob
from storage.sql.cache import _LOOKUP_MANY, TenantCachePolicy
from storage.sql.schema import jobs
from tests.backends import Backend, open_backend
from tests.conftest import TRIO, make_catalog
from tests.fleet import PROCESS_TEST_TIMEOUT_S, fleet, until
from workers.cache import JobCache


def chat(text: str, **kwargs: Any) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)], **kwargs)


@pytest.fixture(params=["embedded", "services"])
async def cached(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend(request.param, tmp_path, cache=True) as backend:
        yield backend


class Pipeline:
    """A backend with the trio catalog on one sim world whose served requests are counted."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.catalog = make_catalog(TRIO)
        self.world: SimWorld = sim_world_for(self.catalog)

    def calls(self) -> int:
        return sum(stats.requests for stats in self.world.stats.values())

    async def client(self, tenant: str | None = None) -> Client:
        return Client(await self.backend.redis(), self.backend.store, self.backend.settings, tenant=tenant)

    async def run(self, client: Client, items: list[NewJob]) -> list[JobRecord]:
        batch_id = await client.submit_batch(items)
        await self.backend.run_worker(catalog=self.catalog, sim_world=self.world)
        return [job async for job in client.results(batch_id)]


@pytest.fixture
def pipeline(cached: Backend) -> Pipeline:
    return Pipeline(cached)


def repeats(total: int, distinct: int, **kwargs: Any) -> list[NewJob]:
    return [
        NewJob(f"line-{i}", chat(f"Summarise topic number {i % distinct}", **kwargs)) for i in range(total)
    ]


async def test_repeats_in_a_batch_make_one_call_each_and_a_rerun_makes_none(pipeline: Pipeline) -> None:
    client = await pipeline.client()
    first = await pipeline.run(client, repeats(40, 10))

    assert {job.status for job in first} == {JobStatus.SUCCEEDED}
    assert pipeline.calls() == 10  # identical requests in flight at once shared one call
    sources = {job.id: job for job in first if job.cache_source is None}
    hits = [job for job in first if job.cache_source is not None]
    assert len(sources) == 10
    assert len(hits) == 30
    for hit in hits:
        source = sources[hit.cache_source or ""]
        assert hit.result is not None
        assert source.result is not None
        assert hit.result["choices"] == source.result["choices"]
        assert hit.result["cache"] == {
            "source_job": source.id,
            "similarity": None,
            "saved_usd": float(source.cost_usd or 0),
        }
        assert hit.cost_usd == 0
        assert hit.attempt_count == 0
        assert hit.saved_usd == source.cost_usd
    ledger = await pipeline.backend.store.ledger.rows(batch_id=first[0].batch_id)
    assert sorted(row["job_id"] for row in ledger) == sorted(sources)

    again = await pipeline.run(client, repeats(40, 10))  # the same file once more
    assert pipeline.calls() == 10  # no new call
    assert [job.result and job.result["choices"] for job in again] == [
        job.result and job.result["choices"] for job in first
    ]
    assert all(job.cache_source in sources for job in again)  # the source, never a hit of a hit
    assert await pipeline.backend.store.ledger.rows(batch_id=again[0].batch_id) == []
    stats = await pipeline.backend.store.cache.stats(client.tenant)
    assert (stats.jobs, stats.hits, stats.entries) == (80, 70, 10)
    assert stats.saved_usd == 7 * sum(job.cost_usd or 0 for job in sources.values())  # 3 + 4 hits each


async def test_refresh_calls_and_its_answer_is_served_next(pipeline: Pipeline) -> None:
    client = await pipeline.client()
    [first] = await pipeline.run(client, repeats(1, 1))
    refresh = Preferences(cache=CachePreference(mode=CacheMode.REFRESH))
    [refreshed] = await pipeline.run(client, repeats(1, 1, preferences=refresh))
    assert pipeline.calls() == 2
    assert refreshed.cache_source is None
    [served] = await pipeline.run(client, repeats(1, 1))
    assert served.cache_source == refreshed.id  # the newest answer
    [off] = await pipeline.run(client, repeats(1, 1, preferences=Preferences(cache="off")))
    assert pipeline.calls() == 3
    assert off.cache_source is None
    assert off.cache_key is None
    assert first.cache_key == refreshed.cache_key == served.cache_key


async def test_a_tenant_never_gets_another_tenants_answer(pipeline: Pipeline) -> None:
    [acme] = await pipeline.run(await pipeline.client("acme"), repeats(1, 1))
    [globex] = await pipeline.run(await pipeline.client("globex"), repeats(1, 1))
    assert pipeline.calls() == 2
    assert acme.cache_source is None
    assert globex.cache_source is None
    [again] = await pipeline.run(await pipeline.client("globex"), repeats(1, 1))
    assert again.cache_source == globex.id
    assert pipeline.calls() == 2


async def test_a_cached_answer_serves_only_requests_whose_constraints_it_meets(pipeline: Pipeline) -> None:
    client = await pipeline.client()
    cheap = Preferences(strategy="cost")
    [low] = await pipeline.run(client, repeats(1, 1, preferences=cheap))
    assert low.deployment == "cheap-a"  # quality 0.6
    strict = Preferences(strategy="cost", min_quality=0.9)
    [high] = await pipeline.run(client, repeats(1, 1, preferences=strict))
    assert high.cache_source is None
    assert high.deployment == "smart-c"
    [served] = await pipeline.run(client, repeats(1, 1, preferences=strict))
    assert served.cache_source == high.id  # the newer, better answer meets it
    [loose] = await pipeline.run(client, repeats(1, 1, preferences=cheap))
    assert loose.cache_source == high.id  # and serves a request without the constraint too
    excluded = Preferences(strategy="cost", exclude_providers=["smart"])
    [other] = await pipeline.run(client, repeats(1, 1, preferences=excluded))
    assert other.cache_source == low.id  # smart's answer is excluded: the older cheap one serves
    assert pipeline.calls() == 2


async def test_answers_older_than_the_ttl_and_before_a_clear_are_not_served(pipeline: Pipeline) -> None:
    client = await pipeline.client()
    store = pipeline.backend.store
    [first] = await pipeline.run(client, repeats(1, 1))
    async with store.engine.begin() as conn:
        old = store.db.now() - timedelta(hours=2)
        await conn.execute(update(jobs).where(jobs.c.id == first.id).values(finished_at=old))
    hour = Preferences(cache=CachePreference(ttl_s=3600))
    [fresh] = await pipeline.run(client, repeats(1, 1, preferences=hour))
    assert fresh.cache_source is None
    assert pipeline.calls() == 2
    [older_ok] = await pipeline.run(
        client, repeats(1, 1, preferences=Preferences(cache=CachePreference(ttl_s=86400)))
    )
    assert older_ok.cache_source == fresh.id

    await store.cache.clear(client.tenant)
    [after_clear] = await pipeline.run(client, repeats(1, 1))
    assert after_clear.cache_source is None
    assert pipeline.calls() == 3
    stats = await store.cache.stats(client.tenant)
    assert stats.entries == 1  # only the answer made after the clear may still be served


async def test_a_tenant_policy_turns_the_cache_off_for_that_tenant(pipeline: Pipeline) -> None:
    store = pipeline.backend.store
    await store.cache.set_policy(TenantCachePolicy("quiet", enabled=False))
    quiet = await pipeline.run(await pipeline.client("quiet"), repeats(3, 1))
    assert pipeline.calls() == 3
    assert all(job.cache_key is None for job in quiet)
    asked = Preferences(cache=CachePreference(mode=CacheMode.USE))  # a request may still ask
    [hit] = await pipeline.run(await pipeline.client("quiet"), repeats(1, 1, preferences=asked))
    [second] = await pipeline.run(await pipeline.client("quiet"), repeats(1, 1, preferences=asked))
    assert hit.cache_source is None
    assert second.cache_source == hit.id


async def test_a_streamed_job_served_from_the_cache_relays_the_whole_answer(pipeline: Pipeline) -> None:
    client = await pipeline.client()
    [first] = await pipeline.run(client, repeats(1, 1))
    job_id = await client.submit(chat("Summarise topic number 0"), stream=True)
    await pipeline.backend.run_worker(catalog=pipeline.catalog, sim_world=pipeline.world)
    record = await client.get(job_id)
    assert record.cache_source == first.id
    assert pipeline.calls() == 1
    pieces = [piece async for piece in StreamRelay(client.redis).follow(job_id)]
    assert first.result is not None
    assert "".join(p.text for p in pieces if p.text) == first.result["content"]
    assert pieces[-1].end == JobStatus.SUCCEEDED.value


async def test_a_waiting_job_leads_when_the_leader_lets_go_without_an_answer(cached: Backend) -> None:
    store = cached.store
    cache = JobCache(store, await cached.redis(), make_catalog(TRIO), CachePolicy(), wait_s=30, lease_s=30)
    request = chat("the same question")
    client = Client(await cached.redis(), store, cached.settings)
    batch_id = await client.submit_batch([NewJob("a", request), NewJob("b", request)])
    a, b = [
        StartedJob(j.id, batch_id, j.custom_id, j.tenant, j.user_id, j.request)
        async for j in client.results(batch_id)
    ]
    guard = Budgets(await cached.redis()).guard(
        job_id=a.id, run=1, tenant=a.tenant, user=a.user_id, batch_id=batch_id, batch_cap_usd=None
    )
    leader = await cache.begin(a, request, guard)
    assert leader is not None
    assert leader.leading
    assert leader.hit is None
    waiter = asyncio.create_task(cache.begin(b, request, guard))
    await until(lambda: _waiting(cached, a.tenant, leader.flight), timeout_s=10, what="a waiter")
    assert not waiter.done()
    await cache.end(a, leader)  # the leader failed: nothing was cached
    follower = await asyncio.wait_for(waiter, 10)
    assert follower is not None
    assert follower.leading
    assert follower.hit is None
    await cache.end(b, follower)
    await cache.close()


async def _waiting(backend: Backend, tenant: str, flight: str) -> bool:
    return bool(await (await backend.redis()).exists(keys.flight_waiting(tenant, flight)))


def test_the_key_covers_what_changes_the_answer_and_nothing_else() -> None:
    base = chat("hello", temperature=0.2)
    same = [
        chat("hello", temperature=0.2, user="someone", metadata={"k": "v"}, service_tier="flex"),
        chat("hello", temperature=0.2, preferences=Preferences(min_quality=0.5, cache="refresh")),
    ]
    different = [
        chat("hello!", temperature=0.2),
        chat("hello", temperature=0.3),
        chat("hello", temperature=0.2, model="fast-b"),
        chat("hello", temperature=0.2, seed=1),
        chat("hello", temperature=0.2, max_tokens=10),
        chat("hello", temperature=0.2, preferences=Preferences(strategy="cost")),
        chat("hello", temperature=0.2, response_format={"type": "json_object"}),
    ]
    assert {cache_key(r) for r in same} == {cache_key(base)}
    assert len({cache_key(r) for r in different} | {cache_key(base)}) == len(different) + 1
    assert semantic_group(chat("hello")) == semantic_group(chat("good morning"))
    assert semantic_group(chat("hello")) != semantic_group(chat("hello", seed=3))


def test_the_decision_layers_settings_tenant_and_request() -> None:
    fleet = CachePolicy()
    assert decide(chat("x"), fleet).mode is CacheMode.USE
    assert decide(chat("x", temperature=1.0), CachePolicy(sampled=False)).mode is CacheMode.OFF
    assert decide(chat("x", temperature=0.0), CachePolicy(sampled=False)).mode is CacheMode.USE
    tenant = fleet.overridden(enabled=False, ttl_s=60, semantic=None)
    assert (tenant.enabled, tenant.ttl_s, tenant.semantic) == (False, 60, False)
    assert decide(chat("x"), tenant).mode is CacheMode.OFF
    asked = chat("x", preferences=Preferences(cache=CachePreference(mode=CacheMode.USE, ttl_s=5)))
    decision = decide(asked, tenant)
    assert (decision.mode, decision.ttl_s, decision.reads, decision.writes) == (CacheMode.USE, 5, True, True)
    assert ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "preferences": {"cache": "off"}}
    ).preferences.cache == CachePreference(mode=CacheMode.OFF)
    with pytest.raises(ValueError, match="cache"):
        ChatRequest.model_validate(
            {"messages": [{"role": "user", "content": "x"}], "preferences": {"cache": "sometimes"}}
        )


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT_S)
async def test_fifty_identical_requests_across_two_worker_processes_make_one_call(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(SLOW_CATALOG)
    # Ten slots a worker: one worker alone cannot claim all fifty while its first ten wait out the
    # leader's 400 ms call, so the other takes some whichever wakes first.
    async with open_backend("services", tmp_path, cache=True, worker_concurrency=10) as services:
        async with fleet(tmp_path) as procs:
            for n in range(2):
                procs.worker(f"worker-{n}", services.settings, catalog, ROUTEQ_CACHE="true")
            redis = await services.redis()
            await procs.registered(redis, 2)
            client = Client(redis, services.store, services.settings)
            batch_id = await client.submit_batch(
                [NewJob(f"same-{i}", chat("one question, asked fifty times")) for i in range(50)]
            )
            async with asyncio.timeout(90):
                _ = [event async for event in client.events(batch_id)]
            procs.stop_all()
        results = [job async for job in client.results(batch_id)]
        assert {job.status for job in results} == {JobStatus.SUCCEEDED}
        ledger = await services.store.ledger.rows(batch_id=batch_id)
        assert len(ledger) == 1  # one provider call between the fifty
        assert len({job.worker for job in results}) == 2  # both processes served some
        assert sum(job.cache_source is not None for job in results) == 49


SLOW_CATALOG = """
[[deployments]]
id = "sim-a"
kind = "sim"
model = "sim-a-model"
quality = 0.8
latency_ms = 400
context_window = 100000
price = { input_per_mtok = 1.0, output_per_mtok = 4.0 }
sim = { latency_ms = 400 }
"""


async def test_a_lookup_reads_the_cache_index_even_in_a_generic_plan(cached: Backend) -> None:
    """The exact cache is an index: a lookup must not scan the tenant's jobs of the whole window."""
    engine = cached.store.engine
    # A batch of lookups of one key, as the statement and binds the driver is sent.
    now = cached.store.db.now()
    lookup = _LOOKUP_MANY.compile(engine).construct_expanded_state(
        {"b_tenant": "acme", "b_since": now, "b_keys": ["k"]}
    )
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # asyncpg prepares statements; after five runs PostgreSQL may plan them without the
            # values (a generic plan): plan it that way here.
            await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            await conn.exec_driver_sql(f"PREPARE lookup AS {lookup.statement}")
            given = {"b_tenant": "'acme'", "b_since": "now()", "b_keys_1": "'k'"}
            args = [given.get(name, repr(lookup.parameters[name])) for name in lookup.positiontup or ()]
            explain = f"EXPLAIN EXECUTE lookup({', '.join(args)})"
            try:
                plan = (await conn.exec_driver_sql(explain)).all()
            finally:  # the connection goes back to the pool
                await conn.exec_driver_sql("DEALLOCATE lookup")
                await conn.exec_driver_sql("RESET plan_cache_mode")
        else:
            params = tuple(lookup.parameters[name] for name in lookup.positiontup or ())
            plan = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {lookup.statement}", params)).all()
    assert "ix_jobs_cached" in " ".join(str(row) for row in plan), plan


async def test_a_flight_is_led_by_one_job_and_left_with_a_mark(cached: Backend) -> None:
    flights = Flights(await cached.redis(), lease_s=30)
    assert await flights.enter("acme", "f", "job-a") == Entry(leader=True)
    waiting = await flights.enter("acme", "f", "job-b")
    assert not waiting.leader
    assert 0 < waiting.lease_left_s <= 30
    assert await flights.enter("acme", "f", "job-a") == Entry(leader=True)  # a redelivery of its leader
    assert not await flights.leave("acme", "f", "job-b")  # only the leader leaves
    assert await flights.leave("acme", "f", "job-a")
    # Left: the next job leads, but reads the cache again first (an answer may have just landed).
    assert await flights.enter("acme", "f", "job-c") == Entry(leader=True, recheck=True)
    assert await flights.enter("globex", "f", "job-d") == Entry(leader=True)  # tenants never share
