"""Automatic evaluations: sampling, the beat (cursor, batch cap, sent once), verdicts recorded once,
the eval budget scope, and the workers running the beat themselves. Both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from producer.client import Client
from router_core.errors import ConfigError
from router_core.models import ChatRequest, Message, Preferences
from router_core.providers import sim_world_for
from storage import keys
from storage.fleet.budgets import Budgets, eval_scope, parse_scope, readable_scope
from storage.fleet.quality import FleetQuality
from storage.jobs import FailureCode, JobRecord, JobStatus, NewJob, StartedJob
from storage.sql.evals import EVAL_USER, answered_query
from tests.backends import Backend, pipeline_settings
from tests.conftest import deployment, make_catalog
from tests.fleet import until
from workers.context import WorkerContext
from workers.evals import EVAL_OF, EVAL_OF_DEPLOYMENT, EvalBeat, VerdictRecorder, sampled

CATALOG = make_catalog([deployment("a", quality=0.8), deployment("judge", quality=0.5, sim={"judge": True})])


def ask(text: str) -> ChatRequest:
    return ChatRequest(model="a", messages=[Message(role="user", content=text)], preferences=Preferences())


async def answered_batch(backend: Backend, client: Client, texts: list[str]) -> list[JobRecord]:
    batch = await client.submit_batch([NewJob(f"q{i}", ask(t)) for i, t in enumerate(texts)])
    await backend.run_worker(catalog=CATALOG, sim_world=sim_world_for(CATALOG))
    return [job async for job in client.results(batch)]


def beat_of(backend: Backend, client: Client, **settings: Any) -> EvalBeat:
    values = {"eval_judge": "judge", "eval_sample_rate": 1.0, **settings}
    beat = EvalBeat.from_settings(
        client.redis,
        backend.store,
        client.events_bus,
        CATALOG,
        backend.settings.model_copy(update=values),
        holder="t",
    )
    assert beat is not None
    return beat


async def tick(beat: EvalBeat, client: Client) -> list[str]:
    await client.redis.delete(keys.EVAL_BEAT)  # the next beat now, not an interval later
    done = await beat.tick()
    assert done is not None
    return done.judged


def test_sampling_is_deterministic_and_keeps_about_the_rate() -> None:
    ids = [f"job_{i:05d}" for i in range(4000)]
    kept = [i for i in ids if sampled(i, 0.25)]
    assert 0.22 < len(kept) / len(ids) < 0.28
    assert kept == [i for i in ids if sampled(i, 0.25)]
    assert set(kept) <= {i for i in ids if sampled(i, 0.5)}  # a higher rate keeps a superset
    assert not any(sampled(i, 0.0) for i in ids[:50])
    assert all(sampled(i, 1.0) for i in ids[:50])


def test_evals_are_off_unless_a_judge_and_a_rate_are_set() -> None:
    def beat(**values: Any) -> EvalBeat | None:
        settings = pipeline_settings(**values)
        return EvalBeat.from_settings(None, None, None, CATALOG, settings, holder="t")  # type: ignore[arg-type]

    assert beat(eval_judge=None, eval_sample_rate=1.0) is None
    assert beat(eval_judge="judge", eval_sample_rate=0.0) is None
    with pytest.raises(ConfigError, match="ROUTEQ_EVAL_JUDGE names 'nope'"):
        beat(eval_judge="nope", eval_sample_rate=0.5)


async def test_the_beat_sends_each_answered_job_once_a_batch_at_a_time(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings, tenant="acme")
    jobs = await answered_batch(backend, client, [f"Tell me about topic {i}" for i in range(7)])
    beat = beat_of(backend, client, eval_batch=4)
    first, second = await tick(beat, client), await tick(beat, client)
    assert (len(first), len(second)) == (4, 3)
    assert sorted(first + second) == sorted(job.id for job in jobs)
    assert await tick(beat, client) == []
    # Redis loses the cursor: the jobs are looked at again, but each was sent already.
    await client.redis.delete(keys.EVAL_CURSOR)
    assert await tick(beat, client) == []

    await backend.run_worker(catalog=CATALOG, sim_world=sim_world_for(CATALOG))
    tallies = await backend.store.quality.tallies()
    assert sum(t.samples for t in tallies if t.deployment == "a") == 7
    # The judge jobs themselves (user routeq-eval) are never sampled.
    assert await tick(beat, client) == []


async def test_a_verdict_counts_once_and_a_malformed_one_not_at_all(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings, tenant="acme")
    [job] = await answered_batch(backend, client, ["Tell me something"])
    recorder = VerdictRecorder(backend.store, FleetQuality(client.redis, backend.store, strength=10))
    request = {"model": "judge", "metadata": {EVAL_OF: job.id, EVAL_OF_DEPLOYMENT: "a"}, "messages": []}
    judge_job = StartedJob("job_j", "batch_j", job.id, "acme", EVAL_USER, request)
    assert await recorder(judge_job, '{"score": 0.25, "reason": "meh"}')
    assert not await recorder(judge_job, '{"score": 0.25, "reason": "meh"}')  # a redelivery
    assert not await recorder(judge_job, "I cannot grade this")
    user_job = StartedJob("job_u", "batch_u", job.id, "acme", "alice", request)
    assert not await recorder(user_job, '{"score": 1}')  # only routeq's own judge jobs count
    [tally] = [t for t in await backend.store.quality.tallies() if t.deployment == "a"]
    assert (tally.samples, tally.total) == (1, 0.25)


async def test_the_eval_scope_caps_judging_apart_from_the_users_traffic(backend: Backend) -> None:
    assert parse_scope("eval:acme") == eval_scope("acme")
    assert readable_scope(eval_scope("a/b")) == "eval:a/b"
    client = Client(await backend.redis(), backend.store, backend.settings, tenant="acme")
    budgets = Budgets(client.redis)
    await budgets.set_cap(eval_scope("acme"), 0.0)
    jobs = await answered_batch(backend, client, ["Tell me about caps"])
    assert jobs[0].status is JobStatus.SUCCEEDED  # the user's traffic is not the eval scope's
    beat = beat_of(backend, client)
    assert await tick(beat, client) == [jobs[0].id]
    await backend.run_worker(catalog=CATALOG, sim_world=sim_world_for(CATALOG))
    judged = [j async for j in client.results((await tick_batches(client)).pop())]
    assert [(j.status, j.failure.code if j.failure else None) for j in judged] == [
        (JobStatus.FAILED, FailureCode.BUDGET_EXCEEDED)
    ]
    assert "budget exceeded: eval acme" in (judged[0].error or {}).get("message", "")


async def tick_batches(client: Client) -> list[str]:
    """The tenant's eval batches, newest last."""
    batches = await client.store.batches.list(tenant="acme", limit=50)
    return [b.id for b in reversed(batches) if b.user_id == EVAL_USER]


async def test_workers_run_the_beat_themselves(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings, tenant="acme")
    jobs = await answered_batch(backend, client, ["Tell me about beats"])
    backend.settings = backend.settings.model_copy(
        update={"eval_judge": "judge", "eval_sample_rate": 1.0, "eval_interval_s": 0.05}
    )

    async def judged(_: WorkerContext) -> None:
        await until(lambda: client.redis.exists(keys.eval_judged(jobs[0].id)), timeout_s=10, what="a beat")

    await backend.run_worker(catalog=CATALOG, sim_world=sim_world_for(CATALOG), before_shutdown=judged)
    assert await client.redis.get(keys.eval_judged(jobs[0].id)) is not None


async def test_the_beat_reads_its_partial_index_even_in_a_generic_plan(backend: Backend) -> None:
    """A beat must not scan every job: its page comes from `ix_jobs_answered`, as literal text keeps it."""
    engine = backend.store.engine
    at = datetime(2026, 1, 1, tzinfo=UTC)
    compiled = answered_query((at, "job_x"), 500).compile(engine)
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            await conn.exec_driver_sql(f"PREPARE page AS {compiled}")
            args = [repr(compiled.params[name]) for name in compiled.positiontup or ()]
            args = ["now()" if "datetime" in a else a for a in args]
            try:
                plan = (await conn.exec_driver_sql(f"EXPLAIN EXECUTE page({', '.join(args)})")).all()
            finally:  # the connection goes back to the pool
                await conn.exec_driver_sql("DEALLOCATE page")
                await conn.exec_driver_sql("RESET plan_cache_mode")
        else:
            params = tuple(compiled.params[name] for name in compiled.positiontup or ())
            plan = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)).all()
    assert "ix_jobs_answered" in " ".join(str(row) for row in plan), plan
