"""`RedisFleetState`: the `FleetState` of a fleet, so every worker sees one breaker and one set of limits.

Same rules as `router_core.fleet.InMemoryFleetState` (read its docstring for the breaker), kept in Redis
(keys in `storage.keys`):

    routeq:dep:<id>            hash  success_rate, latency_ms, calls        live stats (EWMA)
                                     forced, opened_at, cooldown_s          override and breaker
                                     w0..w20 = "<bucket>:<ok>:<failed>"     breaker's failure window
                                     probe:<ticket>                         a half-open probe in flight
                                     rate_window_s, tokens, seq             window, its token total, tickets
                                     hop_s                                  claim to admission (EWMA)
                                     held_ms                                latest arrival to answer (EWMA)
    routeq:dep:<id>:inflight   zset  ticket -> lease expiry                 max_concurrency, probes
    routeq:dep:<id>:requests   zset  ticket -> latest arrival at the       rpm (exact sliding log)
                                     provider (in flight: admission + lease,
                                     i.e. still counted)
    routeq:dep:<id>:tokens     hash  ticket -> tokens counted for tpm       tpm (estimate, then real usage)

Why each operation is one Lua script: `admit` checks and takes (a probe slot, a concurrency slot, a
request and its tokens) in one step; split into commands, two workers could both see the last free
slot and both take it, multiplying every limit by the size of the fleet. `release` reads the
breaker state and writes the outcome that may open or close it, which is a read-modify-write too.
`snapshot` prunes expired entries before counting, `force` sets the override and resets the
breaker together. Each script touches the keys of one deployment (snapshot: of the ones asked for).

Bounded state. In-flight tickets are scored by lease expiry and pruned on every admit and snapshot,
so a worker killed mid-call gives its slot (and a probe slot: a probe field counts only while its
ticket is in flight) back after `lease_s`. Requests and tokens are pruned past the rate window; the
`tokens` field keeps their sum so admission never adds the whole hash up. Successes come at high
rates, so the breaker window is not a log but a ring of 21 buckets of window_s/20, each holding its
bucket number and counts: a call counts while its bucket overlaps the window, i.e. for window_s plus
at most one bucket (window_s/20), and the state hash stays the same size whatever the traffic.

Time: with no `clock`, the scripts read the Redis server's `TIME`, so machines whose clocks
disagree still agree on windows, leases and cooldowns. Tests pass a `FakeClock` instead. The
cooldown is stored when a circuit opens, so a reader with other settings (the CLI, a worker being
reconfigured) still sees when it half-opens; the members of a fleet should share one
`BreakerPolicy` all the same (workers read it from the same settings).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from router_core.catalog import Deployment
from router_core.clock import Clock
from router_core.fleet import (
    ARRIVAL_MARGIN_S,
    CONCURRENCY_RETRY_S,
    Admission,
    BreakerPolicy,
    CallOutcome,
    CircuitState,
    DeploymentSnapshot,
    Forced,
    Refusal,
    SpendHold,
    admit_holding,
)
from storage import keys
from storage.bus.coalesce import BatchedScript
from storage.connections import as_text
from storage.fleet._state_scripts import (
    ADMIT,
    ADMIT_ARGS,
    ADMIT_HOLDING,
    ADMIT_KEYS,
    FORCE,
    RELEASE,
    RELEASE_ARGS,
    RELEASE_GIVING_BACK,
    RELEASE_KEYS,
    SNAPSHOT,
)
from storage.settings import Settings

if TYPE_CHECKING:
    from storage.fleet.budgets import ScriptHold

__all__ = ["RedisFleetState"]

_SERVER_TIME = "-1"


class RedisFleetState:
    """`FleetState` shared by every worker of a fleet through one Redis.

    Args:
        redis: the fleet's Redis (any `redis.asyncio.Redis`, decoded responses or not).
        breaker: the breaker policy; the members of a fleet should share one (an open circuit's
            cooldown is stored with it, so readers agree on when it half-opens).
        clock: where time comes from; None (production) means the Redis server's clock.
        alpha: weight of the newest call in the success-rate and latency EWMAs.
        lease_s: how long an admitted call may stay in flight before its slot is taken back (a
            worker killed mid-call never releases); keep it above the longest provider timeout.
        arrival_margin_s: the longest a call may take from its start to the provider counting it
            (`ROUTEQ_RATE_LIMIT_MARGIN_S`). A call counts from its admission until a window after
            the latest moment it can have arrived: its answer less the time the provider says it
            held it, when it says (no margin then); else its answer, or its start plus this margin
            if that is sooner (or it was not answered). See "Rate windows" in `router_core.fleet`.
        trust_processing_time: believe the providers' reported hold (`release(server_s=...)`);
            False (`ROUTEQ_TRUST_PROCESSING_TIME=false`) counts calls as if no provider reported one.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        breaker: BreakerPolicy | None = None,
        clock: Clock | None = None,
        alpha: float = 0.2,
        lease_s: float = 300.0,
        arrival_margin_s: float = ARRIVAL_MARGIN_S,
        trust_processing_time: bool = True,
    ) -> None:
        self._redis = redis
        self._arrival_margin_s = arrival_margin_s
        self._trust_processing_time = trust_processing_time
        self.breaker = breaker or BreakerPolicy()
        self._clock = clock
        self._alpha = alpha
        self._lease_s = lease_s
        self._admit = BatchedScript(redis, ADMIT)
        self._admit_holding = BatchedScript(redis, ADMIT_HOLDING)
        self._release = BatchedScript(redis, RELEASE)
        self._release_giving_back = BatchedScript(redis, RELEASE_GIVING_BACK)
        self._snapshot = BatchedScript(redis, SNAPSHOT)
        self._reading: dict[tuple[str, ...], asyncio.Future[Mapping[str, DeploymentSnapshot]]] = {}
        self._force = redis.register_script(FORCE)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> RedisFleetState:
        """A worker's: the breaker, rate-limit margin and trust in providers' reported holds the
        settings give; a lease past twice the default timeout, plus a minute."""
        return cls(
            redis,
            breaker=settings.breaker_policy(),
            lease_s=settings.default_timeout_ms / 1000 * 2 + 60,
            arrival_margin_s=settings.rate_limit_margin_s,
            trust_processing_time=settings.trust_processing_time,
        )

    def _now(self) -> str:
        return _SERVER_TIME if self._clock is None else repr(float(self._clock.now()))

    async def snapshot(self, deployment_ids: Sequence[str]) -> Mapping[str, DeploymentSnapshot]:
        """Live stats of each deployment, after dropping expired leases and requests.

        Callers asking for the same deployments while a read is on its way share it (a worker plans
        every job it starts: hundreds of the same read a second, each a script call and a parse of
        its reply): they get what a read sent a moment later would give. The mapping is shared:
        read it, do not change it.
        """
        if not deployment_ids:
            return {}
        now = self._now()
        ids = (now, *deployment_ids)  # a fake clock's reads share only with reads at the same time
        reading = self._reading.get(ids)
        if reading is None:
            reading = self._reading[ids] = asyncio.ensure_future(self._read_snapshot(now, ids[1:]))
            reading.add_done_callback(lambda _: self._reading.pop(ids, None))
        return await asyncio.shield(reading)  # one caller cancelled does not cancel the others' read

    async def _read_snapshot(
        self, now: str, deployment_ids: Sequence[str]
    ) -> Mapping[str, DeploymentSnapshot]:
        script_keys = [key for dep in deployment_ids for key in _deployment_keys(dep)]
        reply: list[list[Any]] = await self._snapshot(
            keys=script_keys, args=[now, _arg(self.breaker.cooldown_s)]
        )
        return {dep: _deployment_snapshot(row) for dep, row in zip(deployment_ids, reply, strict=True)}

    async def admit(
        self, deployment: Deployment, tokens: int, *, waiter: str | None = None, hold: SpendHold | None = None
    ) -> Admission:
        """Atomically check and take what one call needs; `tokens` is the worst-case estimate.

        An admitted `waiter` (a job id) gives up its claim on a slot (`storage.fleet.line`) in the
        same step. A `hold` whose guard can say it as script keys (`JobSpendGuard.script_hold`) is
        checked and taken in the same script, one round trip; another guard's is reserved first
        (`admit_holding`).
        """
        script_hold = getattr(hold.guard, "script_hold", None) if hold is not None else None
        spend: ScriptHold | None = None
        if hold is not None and script_hold is not None:
            spend = script_hold(hold.attempt_no, hold.deployment_id, hold.amount_usd)
        if hold is not None and spend is None:
            return await admit_holding(lambda: self.admit(deployment, tokens, waiter=waiter), hold)
        state, inflight, requests, token_counts = _deployment_keys(deployment.id)
        args = [
            self._now(),
            _arg(tokens),
            _arg(deployment.rate_window_s),
            _arg(deployment.max_concurrency),
            _arg(deployment.rpm),
            _arg(deployment.tpm),
            _arg(self.breaker.cooldown_s),
            _arg(self.breaker.probes),
            _arg(self._lease_s),
            _arg(CONCURRENCY_RETRY_S),
            waiter or "",
        ]
        script_keys = [state, inflight, requests, token_counts, keys.deployment_claims(deployment.id)]
        if spend is None:
            reply: list[Any] = await self._admit(keys=script_keys, args=args)
        else:
            assert (len(script_keys), len(args)) == (ADMIT_KEYS, ADMIT_ARGS), "the hold's offsets moved"
            reply = await self._admit_holding(keys=script_keys + spend.keys, args=args + spend.args)
            if as_text(reply[0]) == "spend":
                return Admission(None, spend_refusal=spend.refusal(reply[1]))
        status, value, extra = (as_text(v) for v in reply)
        if status == "admitted":
            return Admission(value, probe=extra == "1")
        return Admission(None, Refusal(value), float(extra) if extra else None)

    async def release(
        self,
        deployment: Deployment,
        admission: Admission,
        outcome: CallOutcome,
        latency_ms: float | None,
        tokens: int | None,
        *,
        answered: bool = True,
        server_s: float | None = None,
        give_back: SpendHold | None = None,
    ) -> None:
        """End an admitted call; `tokens` is the real usage (None keeps the estimate).

        `answered`: the provider replied, so the call arrived before now; `server_s`: it says it
        held the call this long after counting it, so it arrived that long before now (when
        trusted; `router_core.fleet`). `give_back`: the call's hold, dropped in the same script
        when its guard can say it as script keys (`JobSpendGuard.script_release`), else after.
        """
        if admission.ticket is None:
            return
        script_release = getattr(give_back.guard, "script_release", None) if give_back else None
        dropping: tuple[list[str], list[str]] | None = None
        if give_back is not None and script_release is not None:
            dropping = script_release(give_back.attempt_no)
        state, inflight, requests, token_counts = _deployment_keys(deployment.id)
        policy = self.breaker
        args = [
            self._now(),
            admission.ticket,
            "1" if admission.probe else "0",
            outcome.value,
            _arg(latency_ms),
            _arg(tokens),
            _arg(self._alpha),
            _arg(policy.cooldown_s),
            _arg(policy.window_s),
            _arg(policy.failure_threshold),
            _arg(policy.min_failure_ratio),
            "1" if answered else "0",
            _arg(self._arrival_margin_s),
            _arg(server_s if self._trust_processing_time else None),
        ]
        script_keys = [state, inflight, token_counts, requests]
        if dropping is None:
            await self._release(keys=script_keys, args=args)
            if give_back is not None:
                await give_back.guard.release(give_back.attempt_no)
            return
        assert (len(script_keys), len(args)) == (RELEASE_KEYS, RELEASE_ARGS), "the hold's offsets moved"
        await self._release_giving_back(keys=script_keys + dropping[0], args=args + dropping[1])

    async def force(self, deployment_id: str, state: Forced | None) -> None:
        """Force a deployment down or up, fleet-wide, until `force(id, None)` clears it."""
        await self._force(keys=[keys.deployment(deployment_id)], args=[state.value if state else ""])

    async def next_rotation(self, key: str) -> int:
        """0, 1, 2... per key, counted across the fleet."""
        # redis-py types hash commands as sync-or-async; on an asyncio client they are awaitable.
        value: int = await self._redis.hincrby(keys.ROTATION, key, 1)  # type: ignore[misc]
        return value - 1


def _deployment_keys(deployment_id: str) -> tuple[str, str, str, str]:
    return (
        keys.deployment(deployment_id),
        keys.deployment_inflight(deployment_id),
        keys.deployment_requests(deployment_id),
        keys.deployment_tokens(deployment_id),
    )


def _arg(value: float | None) -> str:
    """A script argument: '' for None, an int as is, a float in its exact shortest form."""
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else repr(float(value))


def _deployment_snapshot(row: list[Any]) -> DeploymentSnapshot:
    if not row:
        return DeploymentSnapshot()
    rate, latency, calls, forced, circuit, in_flight, requests, tokens = (as_text(v) for v in row)
    return DeploymentSnapshot(
        success_rate=float(rate) if rate else 1.0,
        latency_ewma_ms=float(latency) if latency else None,
        in_flight=int(in_flight),
        circuit=CircuitState(circuit),
        calls=int(calls),
        forced=Forced(forced) if forced else None,
        requests_in_window=int(requests),
        tokens_in_window=int(tokens),
    )
