"""Budgets under a race and the fault matrix, through real arq workers (fakeredis and real Redis)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from producer.client import Client
from router_core import Catalog
from router_core.providers import sim_world_for
from storage.fleet.budgets import Budgets, user_scope
from storage.jobs import ANY_TENANT, JobStatus, NewJob
from tests.backends import Backend, open_backend
from tests.conftest import deployment, make_catalog
from tests.test_pipeline import chat

CAP = 0.50


@pytest.fixture(params=["embedded", "services"])
async def capped(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend(
        request.param, tmp_path, default_user_budget_usd=CAP, worker_concurrency=100
    ) as backend:
        yield backend


async def test_concurrent_jobs_never_overspend_a_users_cap(capped: Backend) -> None:
    """200 jobs of one user, two workers at once: the settled spend stays within $0.50."""
    # Each call's worst case is ~$0.0115 (100 max_tokens at $100/Mtok); it really costs ~$0.0076.
    pricey = deployment("pricey-a", price={"input_per_mtok": 100.0, "output_per_mtok": 100.0})
    catalog = make_catalog([{**pricey, "sim": {"latency_ms": 20}}])
    world = sim_world_for(catalog)
    client = Client(await capped.redis(), capped.store, capped.settings)
    batch_id = await client.submit_batch(
        [NewJob(f"b-{i}", chat(f"budget race {i}", max_tokens=100)) for i in range(200)]
    )
    # Two workers race for the same budget. (They poll slowly: on in-process fakeredis arq's
    # per-poll check of the other worker's running jobs would otherwise eat the CPU.)
    workers = [capped.run_worker(catalog=catalog, sim_world=world, poll_delay=0.1) for _ in range(2)]
    await asyncio.gather(*workers)

    jobs = [job async for job in client.results(batch_id)]
    statuses = Counter(job.status for job in jobs)
    ledger = await capped.store.ledger.rows(batch_id=batch_id)
    spent = sum((row["cost_usd"] for row in ledger), Decimal(0))
    print(f"budget race: {dict(statuses)}, settled ${spent:.4f} of ${CAP:.2f}")
    assert spent <= Decimal(str(CAP)), spent
    # Jobs blocked only by other calls' holds waited for them to settle, so a job was refused only
    # once the settled spend left less than one call's worst case: the cap was used, not wasted.
    assert Decimal(str(CAP)) - spent < Decimal("0.0115"), spent
    assert statuses[JobStatus.FAILED] > 0
    assert statuses[JobStatus.SUCCEEDED] + statuses[JobStatus.FAILED] == 200
    refused = [job for job in jobs if job.status == JobStatus.FAILED]
    for job in refused:
        assert job.error is not None
        assert job.error["type"] == "BudgetExceededError"
        assert "user default/default" in job.error["message"]
        assert "cap $0.5000" in job.error["message"]
    usage = await Budgets(await capped.redis()).usage(user_scope("default", "default"))
    assert usage.reserved_usd == 0  # every hold was settled or released
    assert usage.spent_usd == pytest.approx(float(spent), abs=1e-5)  # Redis agrees with the ledger


# Each faulty deployment does one thing wrong on every call; good-f always answers.
FAULTS = {
    "r429-a": ({"rate_limit_rate": 1.0, "retry_after_s": 0.05}, "RateLimitedError"),
    "e5xx-b": ({"error_rate": 1.0}, "ProviderServerError"),
    "hang-c": ({"timeout_rate": 1.0, "hang_s": 5.0}, "ProviderTimeoutError"),
    "reset-d": ({"drop_rate": 1.0}, "ProviderConnectionError"),
    "junk-e": ({"malformed_rate": 1.0}, "MalformedResponseError"),
}


@pytest.fixture(params=["embedded", "services"])
async def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend(
        request.param,
        tmp_path,
        max_attempts_per_deployment=2,
        # Short enough that hang-c's 5 s hang times out, long enough that no honest call does on a
        # busy machine (at 200 ms a loaded CI could time out good-f's answer and fail the test).
        default_timeout_ms=2_000,
        breaker_failures=1_000,  # this test is about retries and failover, not the breaker
    ) as backend:
        yield backend


def fault_catalog() -> Catalog:
    faulty = [deployment(name, sim=profile) for name, (profile, _) in FAULTS.items()]
    return make_catalog([*faulty, deployment("good-f")])


def via(chain: list[str]) -> dict[str, object]:
    return {"strategy": "fallback_chain", "chain": chain}


async def test_fault_matrix_every_job_fails_over_or_fails_with_every_attempt(faulty: Backend) -> None:
    catalog = fault_catalog()
    client = Client(await faulty.redis(), faulty.store, faulty.settings)
    requests = []
    for name in FAULTS:
        requests.append(NewJob(f"{name}+good", chat("hi", preferences=via([name, "good-f"]))))
        requests.append(NewJob(f"{name}-only", chat("hi", preferences=via([name]))))
    batch_id = await client.submit_batch(requests)
    await faulty.run_worker(catalog=catalog, sim_world=sim_world_for(catalog))

    jobs = {job.custom_id: job async for job in client.results(batch_id)}
    for name, (_, error_class) in FAULTS.items():
        rescued, alone = jobs[f"{name}+good"], jobs[f"{name}-only"]
        assert (rescued.status, rescued.deployment) == (JobStatus.SUCCEEDED, "good-f"), rescued.error
        assert alone.status == JobStatus.FAILED
        for job, expected in ((rescued, 3), (alone, 2)):
            tried = await faulty.store.jobs.attempts(job.id, tenant=ANY_TENANT)
            assert len(tried) == expected == job.attempt_count
            assert [a["error_class"] for a in tried[:2]] == [error_class, error_class], tried
        assert alone.error is not None
        assert alone.error["type"] == "AllAttemptsFailedError"
        assert error_class in alone.error["message"] or name in alone.error["message"]
    # Retry-After was honoured before the second call to the rate-limited deployment.
    throttled = await faulty.store.jobs.attempts(jobs["r429-a-only"].id, tenant=ANY_TENANT)
    assert throttled[1]["wait_ms"] >= 50
    # Only the calls that answered were billed.
    ledger = await faulty.store.ledger.rows(batch_id=batch_id)
    assert sorted(row["job_id"] for row in ledger) == sorted(jobs[f"{n}+good"].id for n in FAULTS)


async def test_calls_under_a_micro_dollar_never_overspend_a_tiny_cap(backend: Backend) -> None:
    """30 calls of ~$0.0000004 against a $0.00001 cap: each charge counts, none is free in Redis."""
    # 1 cent per million tokens: a call of ~40 tokens costs under half a micro-dollar.
    tiny = deployment("tiny-a", price={"input_per_mtok": 0.01, "output_per_mtok": 0.01})
    catalog = make_catalog([tiny])
    scope = user_scope("default", "default")
    budgets = Budgets(await backend.redis(), default_user_cap_usd=None)
    await budgets.set_cap(scope, 0.00001)
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(
        [NewJob(f"t-{i}", chat(f"tiny {i}", max_tokens=30)) for i in range(30)]
    )
    # One job at a time: no call waits for another's hold, so each either fits or is refused.
    await backend.run_worker(catalog=catalog, sim_world=sim_world_for(catalog), max_jobs=1)

    ledger = await backend.store.ledger.rows(batch_id=batch_id)
    costs = [Decimal(row["cost_usd"]) for row in ledger]
    assert costs
    assert all(0 < cost < Decimal("0.0000005") for cost in costs), costs
    assert sum(costs, Decimal(0)) <= Decimal("0.00001")
    # Redis counts each charge rounded up to a whole micro-dollar, as the ledger rebuild does.
    usage = await budgets.usage(scope)
    assert usage.reserved_usd == 0
    assert usage.spent_usd == len(costs) / 1e6 == 0.00001
    statuses = Counter([job.status async for job in client.results(batch_id)])
    assert statuses == {JobStatus.SUCCEEDED: 10, JobStatus.FAILED: 20}
    assert await budgets.rebuild_from_ledger(backend.store) == {
        scope: 0.00001,
        "tenant:default": 0.00001,
        f"batch:{batch_id}": 0.00001,
    }
