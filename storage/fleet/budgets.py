"""Fleet-wide spend budgets in Redis: caps per user, end user, tenant and batch that no race can
overspend.

One provider call goes through these steps (`router_core.spend` is the router's side):

    reserve   Lua, before the call: if every scope has room for the call's worst-case cost, add it
              to each scope's `reserved` and write the hold `routeq:holds:<job>` `<run>:<attempt_no>`
    call      the provider answers (billed), or fails or is never sent (not billed)
    release   Lua, for a call not billed: the hold is deleted and leaves `reserved` at once
    commit    the run's attempts and ledger rows are committed to SQL (`Runs.finish`)
    settle    Lua, after the commit: each hold leaves `reserved`, the ledger's real cost joins
              `spent`, the hold is deleted

Why a billed call keeps its hold until after the ledger commit: the hold is the write-ahead record
of a call about to be made. A worker killed between the call and the commit leaves it behind; the
job's next run reads it (`Budgets.holds`), charges it (at the ledger's cost if the dead run's
commit went through, else at the amount held) and settles it. Releasing the hold when the answer
arrives would lose that record, and money the provider billed would be in no counter and no ledger.

Reserve checks every scope and takes from all of them in one script, so workers racing for the last
cents of a cap never hold more than the cap between them: `spent + reserved <= cap` in every capped
scope. Release and settle are idempotent (a hold already gone is skipped), so a retried or
duplicated call never counts money twice.

Money is kept in integer micro-dollars, so Lua's doubles add exactly up to 2^53 micro-dollars (about
9 billion USD). Every amount is rounded up to a whole micro-dollar: a hold (so it is never smaller
than the call), and each charge, as the ledger stores it (NUMERIC(20, 10)), on its own. Rounding a
charge to the nearest would make calls under half a micro-dollar free in the counters, and a tiny
cap could then be overspent many times over in the ledger; rounded up, the counters never show
less than the ledger, so settled spend never exceeds a cap. A charge never exceeds its hold (the
hold is the call's worst case, both rounded up alike). The rebuild from the ledger rounds each
charge the same way (`Ledger.micro_spent_by_owner`), so a rebuild of right counters changes nothing.

A cap in `routeq:budget:caps` (scope -> micro-dollars, rounded down, set by operators) wins; without
one a user gets `default_user_cap_usd`, a batch its own cap (`batches.budget_usd`, passed in by the
worker) and a tenant no cap.

A user (`user:<tenant>/<user>`) is the API key's user (or the CLI's ROUTEQ_USER): who submits. An end
user (`end_user:<tenant>/<name>`) is the request's own `user` field, the caller's customer: a job whose
request names one counts against that scope too, which has no cap until an operator sets one
(`routeq budget set end_user:acme/alice 2.00`), so one end user can be stopped while the others of
the same key go on.

An evaluation (`eval:<tenant>`) scope holds what routeq spends grading a tenant's answers (the judge
calls of `workers/evals.py`, the runs of `routeq eval`): those jobs are submitted as the tenant's
reserved user `EVAL_USER` ("routeq-eval"), and count against `eval:<tenant>` *instead of* a user
scope, so evaluations are capped apart from the users' traffic (`routeq budget set eval:acme 1.00`;
no cap until one is set) while the tenant's and the batch's caps still cover them.

Periods (`router_core.periods`): besides its lifetime counters (`routeq:budget:<scope>`) each scope
has counters of the current day, week and month (`routeq:budget:<scope>:<period>:<local start
date>`), in the zone the fleet is configured with. Every hold adds to all of them, capped or not, so a
period cap set mid-period sees the period's spend; caps per period live in
`routeq:budget:caps:<period>` and reserve checks each cap of each scope. A new period is a new key:
it starts from zero with no reset job, and the old one expires two days after its end. The hold
names the period counters it was taken in, and release and settle move those: a call held at 23:59
on January 31st counts in January, whenever it settles (a counter already expired is skipped).

The SQL ledger is the source of truth; the counters in Redis are a fast copy of it, and
`Budgets.rebuild_from_ledger` (lifetime) and `rebuild_periods_from_ledger` (the current periods)
restore them after a Redis loss or a manual change.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

from pydantic_core import to_json
from redis.asyncio import Redis

from router_core.periods import RESETTING, BudgetPeriod, period_bounds, period_label
from router_core.spend import SpendRefusal
from storage import keys
from storage.bus.coalesce import BatchedScript, ready
from storage.connections import as_text
from storage.fleet._budget_scripts import REBUILD, REBUILD_PERIODS, RELEASE, RESERVE, SETTLE
from storage.fleet.budget_scopes import (
    KINDS,
    batch_scope,
    check_scope,
    end_user_scope,
    eval_scope,
    owner_scope,
    parse_scope,
    readable_scope,
    tenant_scope,
    user_scope,
)
from storage.fleet.micro import cap_micro, charge_micro, hold_micro, usd
from storage.sql.evals import EVAL_USER
from storage.sql.store import Store

__all__ = [
    "EVAL_USER",
    "BudgetPeriod",
    "Budgets",
    "Hold",
    "JobSpendGuard",
    "ScopeUsage",
    "ScriptHold",
    "batch_scope",
    "end_user_scope",
    "eval_scope",
    "parse_scope",
    "readable_scope",
    "tenant_scope",
    "user_scope",
]

_BUDGET_PREFIX = keys.budget("")
_HOLDS_PREFIX = keys.job_holds("")


@dataclass(frozen=True, slots=True)
class Hold:
    """The budget held for one call: written before the call, deleted when released or settled."""

    key: str  # "<run>:<attempt_no>", the field in routeq:holds:<job_id>
    run: int
    attempt_no: int
    amount_usd: float
    deployment: str
    scopes: tuple[str, ...]
    created: float  # epoch seconds, from the reserving process's clock
    # The period counters it holds in (`<scope>:<period>:<start>`), of the periods it was taken in.
    periods: tuple[str, ...] = dataclasses.field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class ScopeUsage:
    """A scope's settled spend, the amount held for calls in flight, and the cap that applies, over
    its life or (`period` daily, weekly, monthly) in the period running from `period_start`."""

    scope: str
    spent_usd: float
    reserved_usd: float
    cap_usd: float | None
    period: BudgetPeriod = BudgetPeriod.LIFETIME
    period_start: datetime | None = None  # a local midnight in the budgets' zone; None for lifetime
    period_end: datetime | None = None  # the next period's start

    @property
    def remaining_usd(self) -> float | None:
        """What calls may still take (cap - spent - held, never below 0); None without a cap."""
        if self.cap_usd is None:
            return None
        return max(0.0, round(self.cap_usd - self.spent_usd - self.reserved_usd, 6))


@dataclass(frozen=True, slots=True)
class Periods:
    """RESETTING's periods (day, week, month) holding one local day, as a hold names them."""

    bounds: list[tuple[datetime, datetime]]  # period_bounds of each
    suffixes: list[str]  # a scope's counter in each is scope + suffix (`_period_counter`)
    ends_s: list[float]  # each period's end, epoch seconds
    day_start_s: float
    day_end_s: float

    @classmethod
    def at(cls, at: float, zone: tzinfo) -> Periods:
        bounds = [period_bounds(period, at, zone) for period in RESETTING]
        day_start, day_end = bounds[RESETTING.index(BudgetPeriod.DAILY)]
        return cls(
            bounds=bounds,
            suffixes=[_period_counter("", p, start) for p, (start, _) in zip(RESETTING, bounds, strict=True)],
            ends_s=[end.timestamp() for _, end in bounds],
            day_start_s=day_start.timestamp(),
            day_end_s=day_end.timestamp(),
        )


class Budgets:
    """Spend caps shared by the fleet, one per worker or client process.

    Args:
        redis: the fleet's Redis.
        default_user_cap_usd: cap of a user scope with no cap of its own; None = no cap.
        now: epoch seconds: recorded on each hold, and which day, week and month a call counts in
            (tests inject a fake clock to cross a boundary).
        zone: where periods start (local midnight); the whole fleet must use the same one
            (`Settings.budget_zone()`).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        default_user_cap_usd: float | None = 1.0,
        now: Callable[[], float] = time.time,
        zone: tzinfo = UTC,
    ) -> None:
        self._redis = redis
        self._default_user_cap = None if default_user_cap_usd is None else cap_micro(default_user_cap_usd)
        self._now = now
        self.zone = zone
        self._reserve = BatchedScript(redis, RESERVE)
        self._release = BatchedScript(redis, RELEASE)
        self._settle = BatchedScript(redis, SETTLE)
        self._rebuild = redis.register_script(REBUILD)
        self._rebuild_periods = redis.register_script(REBUILD_PERIODS)
        self._day: Periods | None = None

    def periods_at(self, at: float) -> Periods:
        """The day, week and month holding instant `at` (epoch seconds), as holds name them.

        Kept while `at` stays in the same local day: periods start at local midnights, so every
        instant of a day is in the same week and month. Every hold asks, with the time it is taken.
        """
        if self._day is not None and self._day.day_start_s <= at < self._day.day_end_s:
            return self._day
        self._day = Periods.at(at, self.zone)
        return self._day

    def guard(
        self,
        *,
        job_id: str,
        run: int,
        tenant: str,
        user: str,
        batch_id: str,
        batch_cap_usd: float | None = None,
        end_user: str | None = None,
    ) -> JobSpendGuard:
        """The `SpendGuard` of one run of one job: its calls count against its user, tenant and batch,
        and its request's end user when it names one (no cap unless an operator set one). An
        evaluation job (`EVAL_USER`) counts against `eval:<tenant>` instead of a user scope."""
        owner = owner_scope(tenant, user)
        defaults = {
            owner: None if user == EVAL_USER else self._default_user_cap,
            tenant_scope(tenant): None,
            batch_scope(batch_id): None if batch_cap_usd is None else cap_micro(batch_cap_usd),
        }
        if end_user is not None:
            defaults[end_user_scope(tenant, end_user)] = None
        return JobSpendGuard(self, job_id=job_id, run=run, default_caps=defaults)

    def settle(self, job_id: str, charges: Mapping[str, float | Decimal]) -> Awaitable[int]:
        """Turn holds into charges, after their ledger commit; await how many holds were settled.

        `charges` maps a hold's field (`"<run>:<attempt_no>"`) to the call's cost as the ledger
        holds it (0 for a call with no ledger row). Each such hold leaves `reserved` and the cost
        joins `spent`, in one script. Holds not in `charges` stay; a hold already settled or
        released is skipped, so settling twice never charges twice. The script call is queued when
        this is called (storage/bus/coalesce.py): calls made with it share its pipeline.
        """
        if not charges:
            return ready(0)
        args: list[str] = [_BUDGET_PREFIX, job_id]
        for field, cost_usd in charges.items():
            args += [field, str(charge_micro(cost_usd))]
        settled: Awaitable[int] = self._settle(keys=[keys.job_holds(job_id), keys.OPEN_HOLDS], args=args)
        return settled

    async def open_since(self, before: float, *, limit: int) -> list[str]:
        """Up to `limit` ids of jobs holding budget since before `before` (epoch seconds), oldest first.

        A run settles or releases its holds within its own life; a job here long after is one whose
        run was cut off between its ledger commit and its settle (the sweeper settles those).
        """
        found = await self._redis.zrangebyscore(keys.OPEN_HOLDS, "-inf", before, start=0, num=limit)
        return [as_text(job_id) for job_id in found]

    async def holds(self, job_id: str) -> dict[str, Hold]:
        """The job's holds not yet released or settled, by field (`"<run>:<attempt_no>"`)."""
        # Reads go through a pipeline: redis-py types a bare hgetall as sync-or-async.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.job_holds(job_id))
            (raw,) = await pipe.execute()
        return {as_text(field): _hold(as_text(field), as_text(value)) for field, value in raw.items()}

    async def usage(
        self, scope: str, period: BudgetPeriod = BudgetPeriod.LIFETIME, *, at: float | None = None
    ) -> ScopeUsage:
        """A scope's spend, holds and cap over its life, or in the `period` holding `at` (epoch s;
        default now: the current one). A lifetime cap may be a default (for a batch, only a cap set
        with `set_cap` is seen: its own is in SQL); a period cap is one set with `set_cap`."""
        check_scope(scope)
        start = end = None
        counter = scope
        if period is not BudgetPeriod.LIFETIME:
            start, end = period_bounds(period, self._now() if at is None else at, self.zone)
            counter = _period_counter(scope, period, start)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(keys.budget(counter), ["spent", "reserved"])
            pipe.hget(keys.budget_caps(period), scope)
            (spent, reserved), cap = await pipe.execute()
        if cap is None and scope.startswith("user:") and period is BudgetPeriod.LIFETIME:
            cap = self._default_user_cap
        return ScopeUsage(
            scope=scope,
            spent_usd=usd(spent),
            reserved_usd=usd(reserved),
            cap_usd=None if cap is None else usd(cap),
            period=period,
            period_start=start,
            period_end=end,
        )

    async def set_cap(
        self, scope: str, cap_usd: float | None, period: BudgetPeriod = BudgetPeriod.LIFETIME
    ) -> None:
        """Set a scope's cap of one period for the whole fleet (a lifetime cap of a user replaces the
        default); None removes it. A scope may have one cap per period: a call needs room in each.

        A new period cap counts what the scope spent in the period so far: every call adds to the
        counters of its day, week and month whether or not a cap is set on them.
        """
        check_scope(scope)
        async with self._redis.pipeline(transaction=False) as pipe:
            if cap_usd is None:
                pipe.hdel(keys.budget_caps(period), scope)
            else:
                pipe.hset(keys.budget_caps(period), scope, str(cap_micro(cap_usd)))
            await pipe.execute()

    async def caps(self) -> dict[str, float]:
        """Every lifetime cap operators set, by scope (defaults are not listed; see `period_caps`)."""
        return (await self.period_caps())[BudgetPeriod.LIFETIME]

    async def period_caps(self) -> dict[BudgetPeriod, dict[str, float]]:
        """Every cap operators set, by period, then scope (defaults are not listed)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for period in BudgetPeriod:
                pipe.hgetall(keys.budget_caps(period))
            found = await pipe.execute()
        return {
            period: {as_text(scope): usd(cap) for scope, cap in raw.items()}
            for period, raw in zip(BudgetPeriod, found, strict=True)
        }

    async def every_cap_usage(self) -> list[ScopeUsage]:
        """Every cap operators set, each with its spend and holds in the current period (over the
        scope's life for a lifetime cap), by scope, then lifetime, daily, weekly, monthly."""
        caps = await self.period_caps()
        now = self._now()
        rows: list[tuple[str, BudgetPeriod, float, datetime | None, datetime | None]] = []
        for period, by_scope in caps.items():
            bounds = period_bounds(period, now, self.zone) if period is not BudgetPeriod.LIFETIME else None
            for scope, cap in by_scope.items():
                rows.append((scope, period, cap, *(bounds or (None, None))))
        order = list(BudgetPeriod)
        rows.sort(key=lambda row: (row[0], order.index(row[1])))
        async with self._redis.pipeline(transaction=False) as pipe:
            for scope, period, _, start, _ in rows:
                counter = scope if start is None else _period_counter(scope, period, start)
                pipe.hmget(keys.budget(counter), ["spent", "reserved"])
            counters = await pipe.execute()
        return [
            ScopeUsage(scope, usd(spent), usd(reserved), cap, period, start, end)
            for (scope, period, cap, start, end), (spent, reserved) in zip(rows, counters, strict=True)
        ]

    async def capped_usage(self) -> list[ScopeUsage]:
        """Spend and holds of every scope with a cap an operator set, in two round trips.

        What metrics export: bounded by the caps operators set, where listing every user under the
        default cap would take a SCAN of the whole keyspace (there is no index of user scopes).
        """
        caps = await self.caps()
        scopes = sorted(caps)
        async with self._redis.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.hmget(keys.budget(scope), ["spent", "reserved"])
            counters = await pipe.execute()
        return [
            ScopeUsage(scope=scope, spent_usd=usd(spent), reserved_usd=usd(reserved), cap_usd=caps[scope])
            for scope, (spent, reserved) in zip(scopes, counters, strict=True)
        ]

    async def rebuild_from_ledger(self, store: Store) -> dict[str, float]:
        """Reset every scope's `spent` from the SQL ledger and `reserved` from the holds left in Redis.

        Returns the spent of every scope written, in USD: each user, end user (of the charged job's
        request), tenant and batch the ledger charges, plus scopes Redis knew (or a hold names) that
        the ledger does not (spent 0).

        Run it while workers are stopped or idle. The ledger is read first and the counters are
        written afterwards, so a call settled in between is counted wrongly: twice if its ledger
        row was read and its hold was still there when the counters were written (the settle then
        adds its cost again), not at all if its row was committed after the read and settled before
        the write. A job whose first hold is taken after the SCAN of `routeq:holds:*` is missed
        too: its hold is not counted in `reserved`, which its release or settle then leaves too low.
        """
        spent = await _ledger_spent(store)
        holds_keys = [k async for k in self._scan(_HOLDS_PREFIX + "*")]
        async for key in self._scan(_BUDGET_PREFIX + "*"):
            scope = key.removeprefix(_BUDGET_PREFIX)
            if scope.startswith(KINDS) and not _is_period_counter(scope):  # not caps, not a period's
                spent.setdefault(scope, 0)
        args: list[str] = [_BUDGET_PREFIX]
        for scope, micro in spent.items():
            args += [scope, str(micro)]
        written: list[Any] = await self._rebuild(keys=holds_keys, args=args)
        return {scope: spent.get(scope, 0) / 1e6 for scope in map(as_text, written)}

    async def rebuild_periods_from_ledger(self, store: Store) -> dict[str, float]:
        """Reset the counters of the current day, week and month of every scope from the ledger's
        charges recorded in each (and `reserved` from the holds naming them); past periods' counters
        are left as they are. Returns the spent (USD) of every counter written, by its name
        (`<scope>:<period>:<start>`). Run it while workers are idle, as `rebuild_from_ledger`.

        A charge counts in the period of its ledger row (the run's commit), where the live counters
        count it in the period of its hold: a call held before midnight and committed after it moves
        to the new period.
        """
        now = self._now()
        periods = self.periods_at(now)
        bounds, suffixes = periods.bounds, periods.suffixes
        args = [_BUDGET_PREFIX, *suffixes]
        args += [str(math.ceil(end_s - now) + keys.BUDGET_PERIOD_GRACE_S) for end_s in periods.ends_s]
        for index, (period, (start, end)) in enumerate(zip(RESETTING, bounds, strict=True), start=1):
            spent = await _ledger_spent(store, since=start, until=end)
            async for key in self._scan(_BUDGET_PREFIX + "*" + suffixes[index - 1]):
                scope = key.removeprefix(_BUDGET_PREFIX).removesuffix(suffixes[index - 1])
                if scope.startswith(KINDS) and not _is_period_counter(scope):
                    spent.setdefault(scope, 0)
            for scope, micro in spent.items():
                args += [_period_counter(scope, period, start), str(micro), str(index)]
        holds_keys = [k async for k in self._scan(_HOLDS_PREFIX + "*")]
        written: list[Any] = await self._rebuild_periods(keys=holds_keys, args=args)
        spent_of = dict(zip(args[7::3], args[8::3], strict=True))
        return {counter: int(spent_of.get(counter, 0)) / 1e6 for counter in map(as_text, written)}

    async def _scan(self, pattern: str) -> AsyncIterator[str]:
        async for key in self._redis.scan_iter(match=pattern, count=1000):
            yield as_text(key)


@dataclass(frozen=True, slots=True)
class ScriptHold:
    """One attempt's hold as a script takes it (`JobSpendGuard.script_hold`): the keys and arguments
    of `LUA_HOLD`'s steps, and the refusal a refusing cap's reply (its `hold_refusal`) means."""

    keys: list[str]
    args: list[str]
    refusal: Callable[[Sequence[Any]], SpendRefusal]


class JobSpendGuard:
    """`SpendGuard` of one run of one job (build with `Budgets.guard`)."""

    def __init__(
        self, budgets: Budgets, *, job_id: str, run: int, default_caps: Mapping[str, int | None]
    ) -> None:
        self._budgets = budgets
        self.job_id = job_id
        self.run = run
        self.scopes = tuple(default_caps)
        self._scope_args: list[str] = []
        for scope, cap in default_caps.items():
            self._scope_args += [scope, "" if cap is None else str(cap)]

    async def reserve(self, attempt_no: int, deployment_id: str, amount_usd: float) -> SpendRefusal | None:
        """Hold `amount_usd` in every scope for attempt `attempt_no`; None when held, else why not.

        Reserving an attempt that already has a hold changes nothing and returns None.
        """
        hold = self.script_hold(attempt_no, deployment_id, amount_usd)
        reply: Any = await self._budgets._reserve(keys=hold.keys, args=hold.args)
        return hold.refusal(reply) if isinstance(reply, list) else None

    def script_hold(self, attempt_no: int, deployment_id: str, amount_usd: float) -> ScriptHold:
        """The hold of `reserve` as the keys and arguments of `LUA_HOLD`'s steps, for a script that
        takes it with something else in one step (the fleet's admission: `RedisFleetState.admit`)."""
        budgets = self._budgets
        amount = hold_micro(amount_usd)
        created = budgets._now()
        # The day, week and month the call counts in: those of the moment it is held.
        periods = budgets.periods_at(created)
        counters = [[scope, *(scope + suffix for suffix in periods.suffixes)] for scope in self.scopes]
        hold = {
            "amount_micro": amount,
            "scopes": list(self.scopes),
            "periods": [counter for per_scope in counters for counter in per_scope[1:]],
            "deployment": deployment_id,
            "created": created,
        }
        script_keys = [
            keys.BUDGET_CAPS,
            keys.job_holds(self.job_id),
            keys.OPEN_HOLDS,
            *(keys.budget_caps(period) for period in RESETTING),
            *(keys.budget(counter) for per_scope in counters for counter in per_scope),
        ]
        args = [
            f"{self.run}:{attempt_no}",
            str(amount),
            to_json(hold).decode(),
            self.job_id,
            repr(float(created)),
            *(str(math.ceil(end_s - created) + keys.BUDGET_PERIOD_GRACE_S) for end_s in periods.ends_s),
            *self._scope_args,
        ]

        def refusal(reply: Sequence[Any]) -> SpendRefusal:
            scope, spent, reserved, cap, index = map(as_text, reply)
            kind, _, name = readable_scope(scope).partition(":")
            if index != "0":  # a period's cap: say which period, and when it began
                period = RESETTING[int(index) - 1]
                name += f" ({period.value} from {period_label(periods.bounds[int(index) - 1][0])})"
            message = (
                f"{kind} {name}: spent ${usd(spent):.4f} + held ${usd(reserved):.4f} of cap "
                f"${usd(cap):.4f}; this call needs up to ${amount / 1e6:.4f} on {deployment_id}"
            )
            # Spend alone leaves room: only calls in flight hold it, and they may settle for less.
            return SpendRefusal(message, wait=float(spent) + amount <= float(cap))

        return ScriptHold(script_keys, args, refusal)

    async def release(self, attempt_no: int) -> None:
        """Drop the hold of an attempt not sent or not billed; a hold already gone is left alone."""
        script_keys, args = self.script_release(attempt_no)
        await self._budgets._release(keys=script_keys, args=args)

    def script_release(self, attempt_no: int) -> tuple[list[str], list[str]]:
        """`release`'s keys and arguments (the budget's RELEASE script), for a script that drops the
        hold with something else in one step (`RedisFleetState.release(..., give_back=)`)."""
        return [keys.job_holds(self.job_id), keys.OPEN_HOLDS], [
            f"{self.run}:{attempt_no}",
            _BUDGET_PREFIX,
            self.job_id,
        ]


async def _ledger_spent(
    store: Store, *, since: datetime | None = None, until: datetime | None = None
) -> dict[str, int]:
    """Micro-dollars charged per user (or eval), end user, tenant and batch scope, from one read of
    the ledger (of the charges recorded in `[since, until)` when given)."""
    spent: dict[str, int] = {}
    for owner in await store.ledger.micro_spent_by_owner(since=since, until=until):
        scopes = [
            owner_scope(owner.tenant, owner.user),
            tenant_scope(owner.tenant),
            batch_scope(owner.batch_id),
        ]
        if owner.end_user is not None:
            scopes.append(end_user_scope(owner.tenant, owner.end_user))
        for scope in scopes:
            spent[scope] = spent.get(scope, 0) + owner.micro
    return spent


def _period_counter(scope: str, period: BudgetPeriod, start: datetime) -> str:
    """The counters of `scope` in the period starting at `start`: `<scope>:<period>:<local date>`.

    The hash is `keys.budget(...)` of it. A scope's names never hold a raw `:` (`keys.key_part`), so
    no scope can be read as another scope's period counter.
    """
    return f"{scope}:{period.value}:{period_label(start)}"


def _is_period_counter(name: str) -> bool:
    """True for `_period_counter` names, false for scopes (whose names past the kind have no `:`)."""
    return ":" in name.partition(":")[2]


def _hold(field: str, raw: str) -> Hold:
    data = json.loads(raw)
    run, _, attempt_no = field.partition(":")
    return Hold(
        key=field,
        run=int(run),
        attempt_no=int(attempt_no),
        amount_usd=int(data["amount_micro"]) / 1e6,
        deployment=str(data["deployment"]),
        scopes=tuple(data["scopes"]),
        created=float(data["created"]),
        periods=tuple(data.get("periods", ())),  # holds taken before periods existed have none
    )
