"""Fleet budgets in Redis: arithmetic, the race for the last cents, idempotency, caps, rebuild from SQL.

Every test runs on fakeredis (with Lua) and on a real Redis (ROUTEQ_TEST_REDIS_URL). The rebuild
test pairs fakeredis with a SQLite file and the real Redis with PostgreSQL (ROUTEQ_TEST_DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio import Redis

from producer.client import Client
from router_core.models import ChatRequest, Message
from storage import keys
from storage.fleet.budgets import (
    Budgets,
    Hold,
    ScopeUsage,
    batch_scope,
    end_user_scope,
    parse_scope,
    readable_scope,
    tenant_scope,
    user_scope,
)
from storage.jobs import FailureCode, JobStatus, NewJob, StartedJob
from storage.sql.schema import ledger
from storage.sql.store import Store
from tests.backends import REDIS_ENV, Backend, service_url, store_beside

NOW = 1_700_000_000.0
ALICE = user_scope("acme", "alice")
ACME = tenant_scope("acme")
B1 = batch_scope("b1")

Connect = Callable[[], Redis]


@pytest.fixture(params=["fakeredis", "redis"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """Makes clients of one Redis, as separate worker processes would have; flushed around the test."""
    clients: list[Redis] = []
    server = FakeServer()
    url = service_url(REDIS_ENV) if request.param == "redis" else None

    def make() -> Redis:
        client = Redis.from_url(url) if url else FakeAsyncRedis(server=server)
        clients.append(client)
        return client

    first = make()
    await first.flushdb()
    try:
        yield make
    finally:
        await first.flushdb()
        for client in clients:
            await client.aclose()


@pytest.fixture
def redis(connect: Connect) -> Redis:
    return connect()


def budgets(redis: Redis, default_user_cap_usd: float | None = 1.0) -> Budgets:
    return Budgets(redis, default_user_cap_usd=default_user_cap_usd, now=lambda: NOW)


async def usages(b: Budgets, *scopes: str) -> list[tuple[float, float]]:
    """(spent, reserved) of each scope, rounded to the micro-dollar."""
    return [(round(u.spent_usd, 6), round(u.reserved_usd, 6)) for u in [await b.usage(s) for s in scopes]]


async def test_reserve_release_settle_move_money_in_every_scope(redis: Redis) -> None:
    b = budgets(redis)
    guard = b.guard(job_id="job_a", run=1, tenant="acme", user="alice", batch_id="b1", batch_cap_usd=0.5)

    assert await guard.reserve(1, "dep-x", 0.0123) is None
    assert await guard.reserve(2, "dep-y", 0.02) is None
    assert await usages(b, ALICE, ACME, B1) == [(0.0, 0.0323)] * 3
    assert await b.holds("job_a") == {
        "1:1": Hold("1:1", 1, 1, 0.0123, "dep-x", (ALICE, ACME, B1), NOW),
        "1:2": Hold("1:2", 1, 2, 0.02, "dep-y", (ALICE, ACME, B1), NOW),
    }

    await guard.release(2)  # not billed
    assert await usages(b, ALICE, ACME, B1) == [(0.0, 0.0123)] * 3

    assert await b.settle("job_a", {"1:1": 0.0076}) == 1  # billed less than the worst case
    assert await usages(b, ALICE, ACME, B1) == [(0.0076, 0.0)] * 3
    assert await b.holds("job_a") == {}
    assert await redis.exists(keys.job_holds("job_a")) == 0

    # Caps as `usage` reports them: the user's default; no tenant cap; the batch's own cap is in SQL.
    assert await b.usage(ALICE) == ScopeUsage(ALICE, 0.0076, 0.0, 1.0)
    assert (await b.usage(ACME)).cap_usd is None
    assert (await b.usage(B1)).cap_usd is None


async def test_a_refusal_names_the_scope_spend_hold_and_cap_and_takes_nothing(redis: Redis) -> None:
    b = budgets(redis, default_user_cap_usd=0.5)
    guard = b.guard(job_id="job_b", run=3, tenant="acme", user="bob", batch_id="b2")
    assert await guard.reserve(1, "dep-x", 0.4812) is None
    await b.settle("job_b", {"3:1": 0.4812})
    assert await guard.reserve(2, "dep-x", 0.01) is None

    refusal = await guard.reserve(3, "dep-z", 0.0123)
    assert refusal == (
        "user acme/bob: spent $0.4812 + held $0.0100 of cap $0.5000; this call needs up to $0.0123 on dep-z"
    )
    assert set(await b.holds("job_b")) == {"3:2"}
    scopes = user_scope("acme", "bob"), ACME, batch_scope("b2")
    assert await usages(b, *scopes) == [(0.4812, 0.01)] * 3

    # The first scope without room refuses, whichever it is; the call fitting exactly is held.
    await b.set_cap(ACME, 0.5)
    await b.set_cap(user_scope("acme", "bob"), 10.0)
    refusal = await guard.reserve(3, "dep-z", 0.0089)
    assert refusal is not None
    assert refusal.startswith("tenant acme: spent $0.4812 + held $0.0100 of cap $0.5000;")
    assert await guard.reserve(3, "dep-z", 0.0088) is None
    assert await usages(b, ACME) == [(0.4812, 0.0188)]


async def test_200_concurrent_reserves_hold_exactly_the_cap(connect: Connect) -> None:
    """Two processes race 200 calls of $0.01 for a $0.50 cap: exactly 50 are held, never more spent."""
    fleet = [budgets(connect(), default_user_cap_usd=0.5) for _ in range(2)]
    guards = [
        fleet[i % 2].guard(job_id=f"job_{i}", run=1, tenant="acme", user="alice", batch_id="b1")
        for i in range(200)
    ]
    refusals = await asyncio.gather(*(g.reserve(1, "dep-x", 0.01) for g in guards))

    held = [g.job_id for g, refusal in zip(guards, refusals, strict=True) if refusal is None]
    assert len(held) == 50
    assert await usages(fleet[0], ALICE) == [(0.0, 0.5)]
    assert all("user acme/alice" in r and "cap $0.5000" in r for r in refusals if r is not None)

    # Each call really cost at most its hold: settled spend stays within the cap.
    await asyncio.gather(*(fleet[0].settle(job_id, {"1:1": 0.0099}) for job_id in held))
    usage = await fleet[1].usage(ALICE)
    assert (round(usage.spent_usd, 6), usage.reserved_usd) == (0.495, 0.0)
    assert usage.spent_usd <= 0.5
    assert not any(await asyncio.gather(*(fleet[1].holds(g.job_id) for g in guards)))


async def test_reserve_release_and_settle_are_idempotent(redis: Redis) -> None:
    b = budgets(redis)
    guard = b.guard(job_id="job_c", run=2, tenant="acme", user="alice", batch_id="b1")
    assert await guard.reserve(1, "dep-x", 0.03) is None
    assert await guard.reserve(1, "dep-x", 0.03) is None  # the same attempt again: still one hold
    assert await guard.reserve(1, "dep-other", 0.5) is None  # and the first hold stands
    assert await usages(b, ALICE, ACME, B1) == [(0.0, 0.03)] * 3
    assert (await b.holds("job_c"))["2:1"].deployment == "dep-x"

    assert await guard.reserve(2, "dep-x", 0.04) is None
    await guard.release(2)
    await guard.release(2)
    await guard.release(99)  # never held
    assert await usages(b, ALICE, ACME, B1) == [(0.0, 0.03)] * 3

    assert await guard.reserve(3, "dep-x", 0.05) is None
    assert await b.settle("job_c", {"2:1": 0.02}) == 1  # 2:3 is not in the charges: it stays
    assert await b.settle("job_c", {"2:1": 0.02}) == 0
    await guard.release(1)  # already settled: nothing to give back
    assert await usages(b, ALICE, ACME, B1) == [(0.02, 0.05)] * 3
    assert set(await b.holds("job_c")) == {"2:3"}

    # A charge for a hold already released (or never made) adds nothing.
    await guard.release(3)
    assert await b.settle("job_c", {"2:3": 0.05, "2:2": 0.04, "7:1": 1.0}) == 0
    assert await b.settle("job_c", {}) == 0
    assert await usages(b, ALICE, ACME, B1) == [(0.02, 0.0)] * 3


async def test_a_job_is_in_the_open_holds_index_while_it_holds_anything(redis: Redis) -> None:
    clock = iter([100.0, 200.0, 300.0])
    b = Budgets(redis, now=lambda: next(clock))
    guard = b.guard(job_id="job_o", run=1, tenant="acme", user="alice", batch_id="b1")
    assert await guard.reserve(1, "dep-x", 0.01) is None  # held at t=100
    assert await guard.reserve(2, "dep-x", 0.01) is None  # at t=200: the job keeps its oldest time
    assert await b.open_since(150.0, limit=10) == ["job_o"]
    assert await b.open_since(99.0, limit=10) == []
    await guard.release(1)
    assert await b.open_since(150.0, limit=10) == ["job_o"]  # 1:2 is still held
    assert await b.settle("job_o", {"1:2": 0.005}) == 1
    assert await b.open_since(1e12, limit=10) == []  # nothing held: out of the index
    assert await guard.reserve(3, "dep-x", 0.01) is None  # held again at t=300
    assert await b.open_since(1e12, limit=10) == ["job_o"]


async def test_a_users_own_cap_beats_the_default(redis: Redis) -> None:
    b = budgets(redis, default_user_cap_usd=0.05)
    alice = b.guard(job_id="job_a", run=1, tenant="acme", user="alice", batch_id="b1")
    bob = b.guard(job_id="job_b", run=1, tenant="acme", user="bob", batch_id="b1")

    await b.set_cap(ALICE, 1.0)
    assert await alice.reserve(1, "dep-x", 0.10) is None
    refusal = await bob.reserve(1, "dep-x", 0.10)
    assert refusal is not None
    assert refusal.startswith("user acme/bob: spent $0.0000 + held $0.0000 of cap $0.0500;")
    assert await b.caps() == {ALICE: 1.0}
    assert (await b.usage(ALICE)).cap_usd == 1.0
    assert (await b.usage(user_scope("acme", "bob"))).cap_usd == 0.05

    await b.set_cap(ALICE, None)  # back to the default
    assert await b.caps() == {}
    refusal = await alice.reserve(2, "dep-x", 0.01)
    assert refusal is not None
    assert refusal.startswith("user acme/alice: spent $0.0000 + held $0.1000 of cap $0.0500;")


async def test_a_batch_cap_refuses_while_the_user_has_room(redis: Redis) -> None:
    b = budgets(redis, default_user_cap_usd=1.0)
    guard = b.guard(job_id="job_a", run=1, tenant="acme", user="alice", batch_id="b1", batch_cap_usd=0.02)
    assert await guard.reserve(1, "dep-x", 0.015) is None
    refusal = await guard.reserve(2, "dep-x", 0.01)
    assert refusal == (
        "batch b1: spent $0.0000 + held $0.0150 of cap $0.0200; this call needs up to $0.0100 on dep-x"
    )
    assert await usages(b, ALICE) == [(0.0, 0.015)]
    # An operator's cap on the batch replaces the batch's own.
    await b.set_cap(B1, 0.5)
    assert await guard.reserve(2, "dep-x", 0.01) is None


async def test_caps_and_amounts_are_checked(redis: Redis) -> None:
    b = budgets(redis)
    with pytest.raises(ValueError, match="not a budget scope"):
        await b.set_cap("alice", 1.0)
    with pytest.raises(ValueError, match="not a budget scope"):
        await b.usage("user:")
    with pytest.raises(ValueError, match="cannot be negative"):
        await b.set_cap(ALICE, -1.0)
    for amount in (math.inf, math.nan):  # they used to end in an OverflowError / a NaN cap
        with pytest.raises(ValueError, match="finite"):
            await b.set_cap(ALICE, amount)
    guard = b.guard(job_id="job_a", run=1, tenant="acme", user="alice", batch_id="b1")
    with pytest.raises(ValueError, match="negative"):
        await guard.reserve(1, "dep-x", -0.01)
    with pytest.raises(ValueError, match="negative"):
        await b.settle("job_a", {"1:1": -0.01})
    # Holds and charges round up to a whole micro-dollar: a hold never undercounts the call, and
    # a charge of a fraction of a micro-dollar is never free in the counters.
    assert await guard.reserve(1, "dep-x", 0.0000001) is None
    assert await usages(b, ALICE) == [(0.0, 0.000001)]
    await b.settle("job_a", {"1:1": Decimal("0.0000004")})
    assert await usages(b, ALICE) == [(0.000001, 0.0)]
    # No default user cap: unlimited.
    free = budgets(redis, default_user_cap_usd=None).guard(
        job_id="job_f", run=1, tenant="acme", user="free", batch_id="b9"
    )
    assert await free.reserve(1, "dep-x", 1_000_000.0) is None


# -- rebuild from the SQL ledger --------------------------------------------------------------------


@pytest.fixture
async def store(connect: Connect, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """SQLite beside fakeredis, PostgreSQL beside a real Redis."""
    async with store_beside(request.node.callspec.params["connect"], tmp_path) as opened:
        yield opened


async def charge(store: Store, b: Budgets, job: StartedJob, *costs: str, end_user: str | None = None) -> None:
    """What a worker does for one run of a job: hold, call, commit the ledger rows, settle."""
    guard = b.guard(
        job_id=job.id, run=1, tenant=job.tenant, user=job.user_id, batch_id=job.batch_id, end_user=end_user
    )
    for n in range(1, len(costs) + 1):
        assert await guard.reserve(n, "dep-x", 0.5) is None
    rows: list[dict[str, Any]] = [
        {
            "job_id": job.id,
            "run": 1,
            "attempt_no": n,
            "batch_id": job.batch_id,
            "tenant": job.tenant,
            "user_id": job.user_id,
            "deployment": "dep-x",
            "provider": "sim",
            "model": "m",
            "cost_usd": Decimal(cost),
            "usage": {},
            "simulated": True,
            "estimated": False,
            "created_at": datetime.now(UTC),
        }
        for n, cost in enumerate(costs, start=1)
    ]
    async with store.engine.begin() as conn:
        await conn.execute(ledger.insert(), rows)
    await b.settle(job.id, {f"1:{n}": Decimal(cost) for n, cost in enumerate(costs, start=1)})


async def new_jobs(store: Store, tenant: str, user: str, n: int) -> list[StartedJob]:
    request = ChatRequest(messages=[Message(role="user", content="hi")])
    created = await store.batches.create(
        [NewJob(f"j{i}", request) for i in range(n)], tenant=tenant, user_id=user
    )
    started: list[StartedJob] = []
    for job_id in created.job_ids:
        job = await store.runs.start(job_id, run=1, worker="w")
        assert isinstance(job, StartedJob)
        started.append(job)
    return started


async def test_rebuild_restores_spend_from_the_ledger_and_holds_from_redis(
    redis: Redis, store: Store
) -> None:
    b = budgets(redis, default_user_cap_usd=100.0)
    a1, a2 = await new_jobs(store, "acme", "alice", 2)
    (b1,) = await new_jobs(store, "acme", "bob", 1)
    (o1,) = await new_jobs(store, "other", "alice", 1)
    # Sub-micro-dollar costs: each charge is rounded on its own, by settle and by the rebuild alike.
    await charge(store, b, a1, "0.0123456789", "0.0000004", "0.0000004")
    await charge(store, b, a2, "0.25", "0.0000004")
    await charge(store, b, b1, "0.1")
    await charge(store, b, o1, "0.05")
    # A call in flight: its hold is the only thing reserved.
    live = b.guard(job_id=a2.id, run=2, tenant="acme", user="alice", batch_id=a2.batch_id)
    assert await live.reserve(1, "dep-x", 0.02) is None

    alice_batch, bob_batch, other_batch = (batch_scope(j.batch_id) for j in (a1, b1, o1))
    scopes = [ALICE, user_scope("acme", "bob"), ACME, user_scope("other", "alice"), tenant_scope("other")]
    scopes += [alice_batch, bob_batch, other_batch]
    before = await usages(b, *scopes)
    assert before[0] == (0.262349, 0.02)  # 12346 + 1 + 1 + 250000 + 1 micro-dollars, each rounded up
    assert before[2] == (0.362349, 0.02)

    # Lose and corrupt counters; leave a scope the ledger never charged.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.budget(ALICE), mapping={"spent": "999", "reserved": "777"})
        pipe.delete(keys.budget(ACME), keys.budget(alice_batch))
        pipe.hset(keys.budget(batch_scope("ghost")), mapping={"spent": "5000", "reserved": "5000"})
        await pipe.execute()

    spent = await b.rebuild_from_ledger(store)

    assert await usages(b, *scopes) == before
    assert await usages(b, batch_scope("ghost")) == [(0.0, 0.0)]
    assert spent == {
        ALICE: 0.262349,
        user_scope("acme", "bob"): 0.1,
        user_scope("other", "alice"): 0.05,
        ACME: 0.362349,
        tenant_scope("other"): 0.05,
        alice_batch: 0.262349,
        bob_batch: 0.1,
        other_batch: 0.05,
        batch_scope("ghost"): 0.0,
    }
    # Rebuilding counters that are right changes nothing, and the live hold still settles once.
    assert await b.rebuild_from_ledger(store) == spent
    assert await b.settle(a2.id, {"2:1": 0.015}) == 1
    assert await usages(b, ALICE, ACME) == [(0.277349, 0.0), (0.377349, 0.0)]


async def test_scopes_of_names_with_slashes_and_colons_never_collide(redis: Redis) -> None:
    """Tenant x/y's user z and tenant x's user y/z are two budgets, and so are the tenants."""
    b = budgets(redis, default_user_cap_usd=0.01)
    one = b.guard(job_id="job_1", run=1, tenant="x/y", user="z", batch_id="b1")
    two = b.guard(job_id="job_2", run=1, tenant="x", user="y/z", batch_id="b2")
    assert len({*one.scopes, *two.scopes}) == 6
    assert await one.reserve(1, "dep-x", 0.01) is None
    assert await two.reserve(1, "dep-x", 0.01) is None  # the other user's cap is not this one's
    assert await usages(b, user_scope("x/y", "z"), user_scope("x", "y/z")) == [(0.0, 0.01)] * 2
    refusal = await one.reserve(2, "dep-x", 0.01)
    assert refusal is not None
    assert refusal.startswith("user x%2Fy/z: spent $0.0000 + held $0.0100 of cap $0.0100;")
    # tenant:a:b is tenant `a:b`; % is encoded too, so an encoded name cannot pose as another.
    assert len({tenant_scope("a:b"), tenant_scope("a%3Ab"), tenant_scope("a/b"), tenant_scope("a%2Fb")}) == 4
    # Names without %, / or : keep the keys (and caps) they always had.
    assert (ALICE, ACME, B1) == ("user:acme/alice", "tenant:acme", "batch:b1")
    with pytest.raises(ValueError, match="not a budget scope"):
        await b.usage("user:x/y/z")  # ambiguous: build it with user_scope or parse_scope


def test_operators_type_and_read_scopes_with_their_names_as_they_are() -> None:
    assert parse_scope("user:acme/alice") == ALICE
    assert parse_scope("tenant:x/y") == tenant_scope("x/y") == "tenant:x%2Fy"
    assert parse_scope("tenant:a:b") == tenant_scope("a:b")
    assert parse_scope("user:x%2Fy/z") == user_scope("x/y", "z")
    assert parse_scope("user:x/y%2Fz") == user_scope("x", "y/z")
    assert parse_scope("batch:b1") == B1
    for typed in ("user:x/y/z", "user:x", "user:/z", "tenant:", "alice", "team:x"):
        with pytest.raises(ValueError, match="not a budget scope"):
            parse_scope(typed)
    for scope in (ALICE, user_scope("x/y", "z"), user_scope("a:b", "50%"), tenant_scope("x/y:%2F"), B1):
        assert parse_scope(readable_scope(scope)) == scope
    assert readable_scope(user_scope("x/y", "z")) == "user:x%2Fy/z"
    assert readable_scope(tenant_scope("x/y:z")) == "tenant:x/y:z"


def test_deployment_keys_never_collide_with_another_deployments_keys() -> None:
    """A catalog id may contain ':': deployment `a:inflight` is not deployment a's in-flight set."""
    ids = ["a", "a:inflight", "a:requests", "a:tokens", "a%3Ainflight"]
    made = [f(i) for i in ids for f in (keys.deployment, keys.deployment_inflight, keys.deployment_requests)]
    made += [keys.deployment_tokens(i) for i in ids]
    assert len(set(made)) == len(made)
    assert keys.deployment("gpt-4o-mini") == "routeq:dep:gpt-4o-mini"  # ordinary ids keep their keys


# -- end users: the `user` a request names ----------------------------------------------------------

CAROL = end_user_scope("acme", "carol")
DAVE = end_user_scope("acme", "dave")


async def test_an_end_users_cap_stops_that_end_user_only(redis: Redis) -> None:
    b = budgets(redis)

    def guard(job_id: str, end_user: str | None) -> Any:
        return b.guard(job_id=job_id, run=1, tenant="acme", user="alice", batch_id="b1", end_user=end_user)

    carol, dave, nobody = guard("job_c", "carol"), guard("job_d", "dave"), guard("job_n", None)
    assert carol.scopes == (ALICE, ACME, B1, CAROL)
    assert nobody.scopes == (ALICE, ACME, B1)
    assert await carol.reserve(1, "dep-x", 0.2) is None  # no cap until an operator sets one
    await b.set_cap(CAROL, 0.25)
    refusal = await carol.reserve(2, "dep-x", 0.1)
    assert refusal == (
        "end_user acme/carol: spent $0.0000 + held $0.2000 of cap $0.2500; "
        "this call needs up to $0.1000 on dep-x"
    )
    assert await dave.reserve(1, "dep-x", 0.1) is None  # the same key's other end users go on
    assert await nobody.reserve(1, "dep-x", 0.1) is None
    assert await usages(b, CAROL, DAVE, ALICE) == [(0.0, 0.2), (0.0, 0.1), (0.0, 0.4)]
    assert await b.settle("job_c", {"1:1": 0.05}) == 1
    assert await usages(b, CAROL, ALICE) == [(0.05, 0.0), (0.05, 0.2)]
    assert await b.usage(CAROL) == ScopeUsage(CAROL, 0.05, 0.0, 0.25)
    assert (await b.usage(DAVE)).cap_usd is None  # the users' default cap is not an end user's


def test_end_user_scopes_are_typed_and_read_like_user_scopes() -> None:
    assert parse_scope("end_user:acme/carol") == CAROL == "end_user:acme/carol"
    assert user_scope("acme", "carol") != CAROL  # an API key's user and an end user are two budgets
    assert parse_scope("end_user:x%2Fy/z") == end_user_scope("x/y", "z")
    assert parse_scope("end_user:x/y%2Fz") == end_user_scope("x", "y/z")
    for typed in ("end_user:acme", "end_user:a/b/c", "end_user:/c", "end_user:a/", "enduser:a/b"):
        with pytest.raises(ValueError, match="not a budget scope"):
            parse_scope(typed)
    for scope in (CAROL, end_user_scope("x/y", "z"), end_user_scope("a:b", "50%")):
        assert parse_scope(readable_scope(scope)) == scope
    assert readable_scope(end_user_scope("x/y", "z")) == "end_user:x%2Fy/z"


async def test_rebuild_restores_end_user_spend_from_the_jobs_that_named_them(
    redis: Redis, store: Store
) -> None:
    b = budgets(redis, default_user_cap_usd=100.0)

    def asked_by(end_user: str | None) -> ChatRequest:
        return ChatRequest(messages=[Message(role="user", content="hi")], user=end_user)

    people = ["carol", "carol", "dave", None]
    created = await store.batches.create(
        [NewJob(f"j{i}", asked_by(who)) for i, who in enumerate(people)], tenant="acme", user_id="alice"
    )
    started = [await store.runs.start(job_id, run=1, worker="w") for job_id in created.job_ids]
    costs = ["0.1", "0.0000004", "0.2", "0.4"]
    for job, who, cost in zip(started, people, costs, strict=True):
        assert isinstance(job, StartedJob)
        await charge(store, b, job, cost, end_user=who)
    before = await usages(b, CAROL, DAVE, ALICE, ACME)
    assert before == [(0.100001, 0.0), (0.2, 0.0), (0.700001, 0.0), (0.700001, 0.0)]

    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.budget(CAROL), mapping={"spent": "999", "reserved": "0"})
        pipe.delete(keys.budget(DAVE))
        await pipe.execute()
    spent = await b.rebuild_from_ledger(store)

    assert await usages(b, CAROL, DAVE, ALICE, ACME) == before
    assert (spent[CAROL], spent[DAVE], spent[ALICE]) == (0.100001, 0.2, 0.700001)
    assert not any(scope.startswith("end_user:") for scope in set(spent) - {CAROL, DAVE})
    assert await b.rebuild_from_ledger(store) == spent  # every charge counted once, however often


async def test_a_capped_end_users_jobs_fail_on_budget_while_the_others_run(backend: Backend) -> None:
    """The pipeline end to end (real Redis and PostgreSQL with the services backend)."""
    redis = await backend.redis()
    tenant = backend.settings.tenant
    await Budgets(redis).set_cap(end_user_scope(tenant, "carol"), 0.0)
    client = Client(redis, backend.store, backend.settings)
    asked = [
        NewJob(
            f"{who or 'nobody'}-{i}",
            ChatRequest(messages=[Message(role="user", content=f"Hi {i}")], user=who),
        )
        for who in ("carol", "dave", None)
        for i in range(3)
    ]
    batch_id = await client.submit_batch(asked)
    assert await backend.run_worker() == 9

    done = {job.custom_id: job async for job in client.results(batch_id)}
    for i in range(3):
        carol = done[f"carol-{i}"]
        assert carol.status is JobStatus.FAILED
        assert carol.failure is not None
        assert carol.failure.code is FailureCode.BUDGET_EXCEEDED
        assert (
            f"end_user {tenant}/carol: spent $0.0000 + held $0.0000 of cap $0.0000" in carol.failure.message
        )
        assert carol.end_user == "carol"
        assert done[f"dave-{i}"].status is JobStatus.SUCCEEDED
        assert done[f"nobody-{i}"].status is JobStatus.SUCCEEDED
    b = Budgets(redis)
    dave_cost = sum(float(done[f"dave-{i}"].cost_usd or 0) for i in range(3))
    assert dave_cost > 0
    assert (await b.usage(end_user_scope(tenant, "dave"))).spent_usd == pytest.approx(dave_cost, abs=1e-5)
    assert (await b.usage(end_user_scope(tenant, "carol"))).spent_usd == 0.0
