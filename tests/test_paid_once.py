"""Nothing paid twice: a run whose commit fails keeps the answer the providers already billed;
cancel and requeue read job ids, not whole rows.

Faults come in through seams: `store.runs` wrapped so one `finish` fails as a dropped database
connection would, and a Redis client whose every command fails. Both backends.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from producer.client import Client
from router_core import Catalog, Router
from router_core.providers import sim_world_for
from router_core.sim.world import SimWorld
from storage import keys
from storage.bus.events import EventBus
from storage.fleet.answers import AnswerStore, SavedAnswer
from storage.fleet.budgets import Budgets, user_scope
from storage.jobs import ANY_TENANT, FailureCode, JobFailure, JobStatus, NewJob
from storage.sql.runs import Runs
from tests.backends import Backend, sql_statements
from tests.conftest import RouterFactory, deployment, make_catalog
from tests.test_chat_routing import WEATHER, ask
from tests.test_pipeline import all_events, chat
from workers.runner import JobRunner
from workers.sweeper import Sweeper


class _FailingFinish:
    """`store.runs` whose first `finish` fails: before its transaction, or after it committed."""

    def __init__(self, runs: Runs, *, after_commit: bool = False) -> None:
        self._runs = runs
        self._after_commit = after_commit
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runs, name)

    async def finish(self, *args: Any, **kwargs: Any) -> bool:
        if self.failures:
            return await self._runs.finish(*args, **kwargs)
        self.failures += 1
        if self._after_commit:
            await self._runs.finish(*args, **kwargs)
        raise OperationalError("UPDATE jobs", {}, ConnectionResetError("connection reset by peer"))


class _DownRedis:
    """A Redis client whose every pipeline, and every connection of its pool, fails to connect."""

    def __init__(self) -> None:
        self.connection_pool = self  # the coalescer takes its connections from the pool

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.pipeline()


@pytest.fixture
async def world(trio: Catalog) -> SimWorld:
    return sim_world_for(trio)


@pytest.fixture
async def router(backend: Backend, trio: Catalog, world: SimWorld) -> AsyncIterator[Router]:
    async with Router.from_settings(backend.settings, catalog=trio, sim_world=world) as opened:
        yield opened


async def _runner(backend: Backend, router: Router, **kwargs: Any) -> JobRunner:
    redis = await backend.redis()
    events = EventBus(redis, retention_s=60)
    return JobRunner(router, backend.store, events, worker_id="w1", budgets=Budgets(redis), **kwargs)


def _calls(world: SimWorld) -> int:
    return sum(stats.requests for stats in world.stats.values())


async def _assert_paid_once(backend: Backend, client: Client, job_id: str, world: SimWorld) -> None:
    job = await client.get(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.result is not None
    assert _calls(world) == 1
    ledger = await backend.store.ledger.rows(job_id=job_id)
    assert [(row["run"], row["estimated"]) for row in ledger] == [(1, False)]
    assert job.cost_usd == sum((row["cost_usd"] for row in ledger), Decimal(0))
    attempts = await backend.store.jobs.attempts(job_id, tenant=ANY_TENANT)
    assert [(a["run"], a["outcome"]) for a in attempts] == [(1, "success")]
    usage = await Budgets(client.redis).usage(user_scope("default", "default"))
    assert usage.reserved_usd == 0
    assert usage.spent_usd == pytest.approx(float(job.cost_usd or 0), abs=1e-6)
    assert not await client.redis.exists(keys.job_answer(job_id))  # cleaned up after the commit
    terminal = [e.type for e in await all_events(client, job.batch_id) if e.type.startswith("job.")]
    assert terminal == ["job.succeeded"]


async def test_a_failed_commit_keeps_the_paid_answer(
    backend: Backend, router: Router, world: SimWorld
) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    flaky = _FailingFinish(backend.store.runs)
    backend.store.runs = flaky  # type: ignore[assignment]
    runner = await _runner(backend, router)

    with pytest.raises(OperationalError):  # route_job turns this into an arq Retry
        await runner.run(job_id, run=1)
    assert flaky.failures == 1
    assert await runner.run(job_id, run=2) == "succeeded"

    await _assert_paid_once(backend, client, job_id, world)


async def test_a_commit_that_went_through_before_failing_is_not_run_again(
    backend: Backend, router: Router, world: SimWorld
) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    backend.store.runs = _FailingFinish(backend.store.runs, after_commit=True)  # type: ignore[assignment]
    runner = await _runner(backend, router)

    with pytest.raises(OperationalError):
        await runner.run(job_id, run=1)
    assert await runner.run(job_id, run=2) == "succeeded"

    await _assert_paid_once(backend, client, job_id, world)


async def test_redis_down_for_the_answer_leaves_the_run_to_its_commit(
    backend: Backend, router: Router, world: SimWorld
) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    runner = await _runner(backend, router, answers=AnswerStore(_DownRedis()))  # type: ignore[arg-type]

    assert await runner.run(job_id, run=1) == "succeeded"

    await _assert_paid_once(backend, client, job_id, world)


async def test_cancel_and_requeue_read_ids_not_requests(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch([NewJob(f"item-{i}", chat(f"hello {i}")) for i in range(5)])
    with sql_statements(backend.store) as requeue_sql:
        assert await client.requeue(batch_id) == 0  # every job is waiting in the queue: none to put back
    with sql_statements(backend.store) as cancel_sql:
        assert await client.cancel(batch_id) == 5
    for statement in requeue_sql + cancel_sql:
        assert "jobs.request" not in statement, statement
    events = [e for e in await all_events(client, batch_id) if e.type == "job.cancelled"]
    assert [e.data["custom_id"] for e in events] == [f"item-{i}" for i in range(5)]
    assert events[0].data["error"] == "cancelled before it started"


async def test_a_run_cut_off_after_its_commit_leaves_holds_the_sweeper_settles(
    backend: Backend, router: Router, world: SimWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """arq's job timeout (or a kill) between the ledger commit and the settle: the job is finished,
    never delivered again, and only the sweeper is left to turn its holds into the ledger's charges."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(chat("hello"))
    runner = await _runner(backend, router)
    budgets = runner.budgets
    settle = budgets.settle

    async def cut_off(job: str, charges: Any) -> int:
        return 0  # the run ends here: committed, never settled

    monkeypatch.setattr(budgets, "settle", cut_off)
    assert await runner.run(job_id, run=1) == "succeeded"
    monkeypatch.setattr(budgets, "settle", settle)
    scope = user_scope("default", "default")
    assert (await budgets.usage(scope)).reserved_usd > 0
    assert await budgets.open_since(time.time() + 1, limit=10) == [job_id]

    sweeper = Sweeper(
        client.redis,
        backend.store,
        EventBus(client.redis, retention_s=60),
        queue_name=backend.settings.queue_name,
        holder="sweeper",
        interval_s=30,
        min_age_s=0,
        runner=runner,
    )
    report = await sweeper.sweep()

    assert report is not None
    assert report.settled == [job_id]
    usage = await budgets.usage(scope)
    ledger = await backend.store.ledger.rows(job_id=job_id)
    assert [(row["run"], row["estimated"]) for row in ledger] == [(1, False)]  # nothing in doubt
    assert usage.reserved_usd == 0
    assert usage.spent_usd == pytest.approx(float(ledger[0]["cost_usd"]), abs=1e-6)
    assert await budgets.open_since(time.time() + 1, limit=10) == []
    assert await runner.settle_leftovers(job_id, held_before=time.time() + 1) == 0  # settled once only
    assert await budgets.usage(scope) == usage


async def test_an_answer_written_ahead_reads_back_whole_and_reads_the_older_format(
    make_router: RouterFactory,
) -> None:
    """`SavedAnswer.dumps` (pydantic-core's JSON) gives back the same answer, and an answer written by
    an older worker (json.dumps of the models' dicts) still reads: workers are upgraded one by one."""
    router = make_router(make_catalog([deployment("sim-a")]))
    request = ask("Quel temps fait-il à Paris? ✓", tools=[WEATHER], n=2, logprobs=True)
    result = await router.complete(request)
    for answer in (
        SavedAnswer(2, result.attempts, result),
        SavedAnswer(3, result.attempts, None, JobFailure(FailureCode.ALL_ATTEMPTS_FAILED, "500 × 3 é")),
    ):
        older = json.dumps(
            {
                "result": None if answer.result is None else answer.result.model_dump(mode="json"),
                "attempts": [a.model_dump(mode="json") for a in answer.attempts],
                "failure": None if answer.failure is None else answer.failure.as_json(),
            },
            separators=(",", ":"),
        )
        assert SavedAnswer.loads(answer.run, answer.dumps()) == answer
        assert SavedAnswer.loads(answer.run, older) == answer
