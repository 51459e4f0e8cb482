"""RedisFleetState against the FleetState contract (fakeredis and real Redis), plus what only a fleet has.

The fleet extras: two fleet states (two workers) on one Redis share breakers and limits, a worker that
dies mid-call gives its slot back after the lease, the server's clock works when no clock is given,
limits hold under concurrent admission, and random sequences of calls leave RedisFleetState and
InMemoryFleetState in exactly the same state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio import Redis

from router_core import (
    Admission,
    CallOutcome,
    CircuitState,
    Deployment,
    FakeClock,
    Forced,
    InMemoryFleetState,
    Refusal,
)
from storage import keys
from storage.fleet.state import RedisFleetState
from tests.backends import REDIS_ENV, service_url
from tests.fleet_state_contract import COOLDOWN_S, POLICY, FleetStateContract, call, dep, snapshot_of

LEASE_S = 30.0

Connect = Callable[[], Redis]

# The breaker's window is a ring of buckets here (it may count a call up to window_s/20 longer than
# InMemoryFleetState would); with a window nothing leaves, the two fleet states must agree exactly.
ENDLESS = dataclasses.replace(POLICY, window_s=1e6, cooldown_s=2.0, probes=2)
DIFF_DEPLOYMENTS = [
    dep(rpm=5, tpm=2_000, max_concurrency=3, rate_window_s=2.0),
    dep(rate_window_s=2.0),
    dep(max_concurrency=2, rate_window_s=2.0),
]
Held = list[tuple[Deployment, Admission, Admission]]


def _answer(a: Admission) -> tuple[object, ...]:
    return (a.admitted, a.refusal, None if a.retry_after_s is None else round(a.retry_after_s, 9), a.probe)


async def _random_step(
    rng: random.Random, clock: FakeClock, mem: InMemoryFleetState, red: RedisFleetState, held: Held
) -> str:
    """One random operation on both fleet states; returns what it was, for the assertion message."""
    op = rng.random()
    if op < 0.4:
        d, tokens = rng.choice(DIFF_DEPLOYMENTS), rng.choice([0, 50, 300, 900])
        a, b = await mem.admit(d, tokens), await red.admit(d, tokens)
        assert _answer(a) == _answer(b), f"admit {tokens} to {d}"
        if a.admitted:
            held.append((d, a, b))
        return f"admit {tokens}: {a}"
    if op < 0.8 and held:
        d, a, b = held.pop(rng.randrange(len(held)))
        outcome = rng.choice(
            [CallOutcome.SUCCESS, CallOutcome.FAILURE, CallOutcome.FAILURE, CallOutcome.NEUTRAL]
        )
        latency, used = rng.choice([None, 10.0, 123.4]), rng.choice([None, 0, 77, 1_500])
        server_s = rng.choice([None, None, 0.0, 0.004, 0.1, 5.0])  # the provider's reported hold
        await mem.release(d, a, outcome, latency, used, server_s=server_s)
        await red.release(d, b, outcome, latency, used, server_s=server_s)
        return f"release {outcome} {latency} {used} held {server_s}"
    if op < 0.83:
        forced = rng.choice([None, None, Forced.UP, Forced.DOWN])
        await mem.force("d", forced)
        await red.force("d", forced)
        return f"force {forced}"
    step = rng.choice([0.0, 0.1, 0.37, 1.0, 2.9, 6.1, 10.3])
    clock.advance(step)
    return f"advance {step}"


class FleetExtras:
    """Behaviour beyond the contract, run on each Redis backend (needs `redis` and `connect`)."""

    async def test_workers_share_the_breaker(self, connect: Connect, clock: FakeClock) -> None:
        one = RedisFleetState(connect(), clock=clock, breaker=POLICY)
        two = RedisFleetState(connect(), clock=clock, breaker=POLICY)
        for _ in range(POLICY.failure_threshold):
            await call(one, CallOutcome.FAILURE)
        assert (await snapshot_of(two)).circuit is CircuitState.OPEN
        assert (await two.admit(dep(), 10)).refusal is Refusal.CIRCUIT_OPEN
        clock.advance(COOLDOWN_S)
        probe = await two.admit(dep(), 10)
        assert probe.probe
        # The probe budget is fleet-wide: the other worker gets no second probe.
        assert (await one.admit(dep(), 10)).refusal is Refusal.CIRCUIT_OPEN
        await two.release(dep(), probe, CallOutcome.SUCCESS, 10.0, None)
        assert (await snapshot_of(one)).circuit is CircuitState.CLOSED

    async def test_the_openers_cooldown_holds_for_every_reader(
        self, connect: Connect, clock: FakeClock
    ) -> None:
        opener = RedisFleetState(connect(), clock=clock, breaker=POLICY)
        reader = RedisFleetState(connect(), clock=clock, breaker=replace(POLICY, cooldown_s=COOLDOWN_S * 10))
        for _ in range(POLICY.failure_threshold):
            await call(opener, CallOutcome.FAILURE)
        clock.advance(COOLDOWN_S)
        assert (await snapshot_of(reader)).circuit is CircuitState.HALF_OPEN
        assert (await reader.admit(dep(), 10)).probe

    async def test_workers_share_the_limits(self, connect: Connect, clock: FakeClock) -> None:
        one = RedisFleetState(connect(), clock=clock, breaker=POLICY)
        two = RedisFleetState(connect(), clock=clock, breaker=POLICY)
        limited = dep(max_concurrency=1, rpm=2)
        first = await one.admit(limited, 10)
        assert (await two.admit(limited, 10)).refusal is Refusal.CONCURRENCY
        await one.release(limited, first, CallOutcome.SUCCESS, 10.0, None)
        await call(two, d=limited)
        assert (await one.admit(limited, 10)).refusal is Refusal.RPM

    async def test_a_leaked_ticket_frees_its_slot_after_the_lease(
        self, redis: Redis, clock: FakeClock
    ) -> None:
        fleet = RedisFleetState(redis, clock=clock, breaker=POLICY, lease_s=LEASE_S)
        limited = dep(max_concurrency=1)
        leaked = await fleet.admit(limited, 10)  # its worker dies: never released
        assert leaked.admitted
        clock.advance(LEASE_S - 1)
        assert (await fleet.admit(limited, 10)).refusal is Refusal.CONCURRENCY
        clock.advance(1)
        assert (await snapshot_of(fleet)).in_flight == 0
        again = await fleet.admit(limited, 10)
        assert again.admitted
        # A release that comes after all (the worker was only slow) frees nothing it does not hold.
        await fleet.release(limited, leaked, CallOutcome.SUCCESS, 10.0, None)
        assert (await snapshot_of(fleet)).in_flight == 1

    async def test_a_leaked_probe_frees_the_probe_slot(self, redis: Redis, clock: FakeClock) -> None:
        fleet = RedisFleetState(redis, clock=clock, breaker=POLICY, lease_s=LEASE_S)
        for _ in range(POLICY.failure_threshold):
            await call(fleet, CallOutcome.FAILURE)
        clock.advance(COOLDOWN_S)
        assert (await fleet.admit(dep(), 10)).probe  # the prober dies
        assert (await fleet.admit(dep(), 10)).refusal is Refusal.CIRCUIT_OPEN
        clock.advance(LEASE_S)
        probe = await fleet.admit(dep(), 10)
        assert probe.probe
        await fleet.release(dep(), probe, CallOutcome.SUCCESS, 10.0, None)
        assert (await snapshot_of(fleet)).circuit is CircuitState.CLOSED

    async def test_failures_anywhere_inside_the_window_count(
        self, fleet: RedisFleetState, clock: FakeClock
    ) -> None:
        for _ in range(POLICY.failure_threshold):
            await call(fleet, CallOutcome.FAILURE)
            clock.advance(POLICY.window_s / 2 - 0.01)  # spread over just under the whole window
        assert (await snapshot_of(fleet)).circuit is CircuitState.OPEN

    async def test_state_stays_bounded(self, redis: Redis, fleet: RedisFleetState, clock: FakeClock) -> None:
        limited = dep(rate_window_s=1.0)
        for i in range(400):
            await call(fleet, CallOutcome.FAILURE if i % 4 == 0 else CallOutcome.SUCCESS, d=limited)
            clock.advance(0.0625)  # a binary fraction: exactly 16 calls per window
        assert await redis.hlen(keys.deployment("d")) <= 35  # type: ignore[misc]
        assert await redis.zcard(keys.deployment_requests("d")) == 16
        assert await redis.hlen(keys.deployment_tokens("d")) == 16  # type: ignore[misc]
        clock.advance(1.0)
        stats = await snapshot_of(fleet)
        assert (stats.requests_in_window, stats.tokens_in_window, stats.calls) == (0, 0, 400)
        assert await redis.exists(keys.deployment_tokens("d")) == 0

    async def test_tpm_waits_for_enough_of_the_oldest_tokens(
        self, fleet: RedisFleetState, clock: FakeClock
    ) -> None:
        limited = dep(tpm=1_000, rate_window_s=10.0)
        for _ in range(4):
            await call(fleet, d=limited, tokens=200)
            clock.advance(1.0)  # ended at t=0, 1, 2, 3; now t=4
        refused = await fleet.admit(limited, 500)  # 800 + 500: the two oldest must leave
        assert refused.refusal is Refusal.TPM
        assert refused.retry_after_s == pytest.approx(7.0)

    @pytest.mark.parametrize("seed", [1, 2, 3])
    async def test_matches_in_memory_step_by_step(self, redis: Redis, clock: FakeClock, seed: int) -> None:
        mem = InMemoryFleetState(clock=clock, breaker=ENDLESS)
        red = RedisFleetState(redis, clock=clock, breaker=ENDLESS, lease_s=1e9)
        rng = random.Random(seed)
        held: Held = []
        for i in range(300):
            what = await _random_step(rng, clock, mem, red, held)
            assert await snapshot_of(mem) == await snapshot_of(red), f"step {i}: {what}"

    async def test_concurrent_admissions_respect_rpm(self, fleet: RedisFleetState) -> None:
        limited = dep(rpm=50)
        admissions = await asyncio.gather(*(fleet.admit(limited, 10) for _ in range(200)))
        assert sum(a.admitted for a in admissions) == 50
        assert {a.refusal for a in admissions if not a.admitted} == {Refusal.RPM}
        assert len({a.ticket for a in admissions if a.admitted}) == 50

    async def test_concurrent_snapshots_share_one_read(
        self, fleet: RedisFleetState, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Snapshots asked while one is on its way share its script call; a cancelled asker does
        not cancel the others' read, and a read at another (fake) time is a read of its own."""
        reads: list[object] = []
        read = fleet._read_snapshot

        async def counted(*args: object) -> object:
            reads.append(args)
            return await read(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(fleet, "_read_snapshot", counted)
        ids = [dep().id]
        first = asyncio.ensure_future(fleet.snapshot(ids))
        await asyncio.sleep(0)  # the first read is on its way
        cancelled = asyncio.ensure_future(fleet.snapshot(ids))
        rest = [asyncio.ensure_future(fleet.snapshot(ids)) for _ in range(3)]
        await asyncio.sleep(0)
        cancelled.cancel()
        answers = await asyncio.gather(first, *rest)
        assert len(reads) == 1
        assert all(a is answers[0] for a in answers)
        assert cancelled.cancelled()
        clock.advance(1)
        await asyncio.gather(fleet.snapshot(ids), fleet.snapshot(ids))
        assert len(reads) == 2
        await fleet.snapshot(ids)  # the last read ended: a new one
        assert len(reads) == 3

    async def test_server_time_when_no_clock_is_given(self, redis: Redis) -> None:
        fleet = RedisFleetState(redis, breaker=POLICY)
        limited = dep(rpm=1, rate_window_s=60.0)
        first = await fleet.admit(limited, 10)
        assert first.admitted
        refused = await fleet.admit(limited, 10)
        assert refused.refusal is Refusal.RPM
        assert refused.retry_after_s is not None
        assert 55.0 < refused.retry_after_s <= 60.0
        assert (await snapshot_of(fleet)).in_flight == 1
        await fleet.release(limited, first, CallOutcome.SUCCESS, 42.0, 7)
        ((_, ended_at),) = await redis.zrange(keys.deployment_requests("d"), 0, 0, withscores=True)
        assert abs(ended_at - time.time()) < 60  # Redis' TIME is wall-clock time, not a monotonic clock
        stats = await snapshot_of(fleet)
        assert (stats.in_flight, stats.calls, stats.latency_ewma_ms, stats.tokens_in_window) == (
            0,
            1,
            42.0,
            7,
        )
        await fleet.force("d", None)
        assert (await snapshot_of(fleet)).circuit is CircuitState.CLOSED

    async def test_server_time_leases_expire(self, redis: Redis) -> None:
        # A zero lease is over by the next call, so the server clock's pruning shows without sleeping.
        fleet = RedisFleetState(redis, breaker=POLICY, lease_s=0.0)
        limited = dep(max_concurrency=1)
        assert (await fleet.admit(limited, 10)).admitted
        assert (await fleet.admit(limited, 10)).admitted
        assert (await snapshot_of(fleet)).in_flight == 0


class RedisFleetStateSuite(FleetStateContract, FleetExtras):
    """The contract and the extras on a backend; subclasses give `connect` (new connections)."""

    @pytest.fixture
    def redis(self, connect: Connect) -> Redis:
        return connect()

    @pytest.fixture
    def fleet(self, redis: Redis, clock: FakeClock) -> RedisFleetState:
        return RedisFleetState(redis, clock=clock, breaker=POLICY)

    @pytest.fixture
    def untrusting(self, redis: Redis, clock: FakeClock) -> RedisFleetState:
        return RedisFleetState(redis, clock=clock, breaker=POLICY, trust_processing_time=False)


class TestRedisFleetStateFake(RedisFleetStateSuite):
    @pytest.fixture
    async def connect(self) -> AsyncIterator[Connect]:
        server = FakeServer()
        conns: list[Redis] = []

        def factory() -> Redis:
            conns.append(FakeAsyncRedis(server=server))
            return conns[-1]

        yield factory
        for conn in conns:
            await conn.aclose()


class TestRedisFleetStateReal(RedisFleetStateSuite):
    @pytest.fixture
    async def connect(self) -> AsyncIterator[Connect]:
        url = service_url(REDIS_ENV)
        conns: list[Redis] = []

        def factory() -> Redis:
            conns.append(Redis.from_url(url))
            return conns[-1]

        await factory().flushdb()
        yield factory
        await conns[0].flushdb()
        for conn in conns:
            await conn.aclose()
