"""Operator commands: `routeq deployments` (fleet state, maintenance) and `routeq budget` (caps, spend).

Both read and change the fleet's state in Redis (ROUTEQ_REDIS_URL); `budget rebuild` also reads the
SQL ledger, which is the source of truth for spend. Redis, the fleet state and the catalog are
imported when a command runs, not when `routeq --help` lists these.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from producer.cli._common import (
    JsonFlag,
    execute,
    fail,
    finite_usd,
    load_settings,
    print_json,
    with_redis,
)
from producer.cli.live_catalog import live_or_file_catalog
from router_core.fleet import Forced
from router_core.periods import BudgetPeriod

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from router_core.catalog import Deployment
    from router_core.fleet import DeploymentSnapshot
    from storage.fleet.budgets import Budgets, ScopeUsage
    from storage.settings import Settings

__all__ = ["budget_app", "deployments_app"]

# Names print as they are: no `:x:` in `tenant:x: ...` turned into an emoji (markup is escaped too).
console = Console(emoji=False)
T = TypeVar("T")

deployments_app = typer.Typer(
    help="Deployments: fleet state (circuits, limits, maintenance) and the live catalog (changes, history)."
)
budget_app = typer.Typer(help="Spend caps and spend per user, end user, tenant or batch.")

DeploymentArg = Annotated[str, typer.Argument(help="A deployment id from the catalog.")]
ScopeArg = Annotated[
    str,
    typer.Argument(
        help="user:<tenant>/<user> (an API key's user), end_user:<tenant>/<name> (a request's `user`), "
        "tenant:<tenant>, eval:<tenant> (its evaluations) or batch:<id>; write a '/' inside a tenant, "
        "user or end user name as %2F.",
    ),
]
PeriodOption = Annotated[
    BudgetPeriod,
    typer.Option(
        "--period",
        help="lifetime (never resets), or daily, weekly (from Monday), monthly: from local midnight in "
        "ROUTEQ_BUDGET_TIMEZONE. A scope may have one cap per period; a call needs room under each.",
    ),
]


async def _with_redis(settings: Settings, action: Callable[[Redis], Awaitable[T]]) -> T:
    return await with_redis(
        settings, action, hint="Fleet state lives in the fleet's Redis: set ROUTEQ_REDIS_URL to it."
    )


@deployments_app.command("list")
def list_deployments(as_json: JsonFlag = False) -> None:
    """Every deployment with its circuit, live stats and rate-window usage, as the fleet sees them."""
    from storage.fleet.state import RedisFleetState  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()
    catalog = live_or_file_catalog(settings)

    async def go(redis: Redis) -> Mapping[str, DeploymentSnapshot]:
        return await RedisFleetState(redis, breaker=settings.breaker_policy()).snapshot(list(catalog))

    stats = execute(_with_redis(settings, go))
    if as_json:
        print_json({"deployments": [_deployment_view(catalog[d], stats[d]) for d in catalog]})
        return
    table = Table(title="deployments (fleet-wide)")
    for column in ("id", "circuit", "forced", "success", "latency ewma", "in flight", "rpm used", "tpm used"):
        table.add_column(column)
    for dep_id, dep in catalog.items():
        s = stats[dep_id]
        latency = f"{s.latency_ewma_ms:.0f} ms" if s.latency_ewma_ms is not None else "-"
        table.add_row(
            escape(dep_id),
            s.circuit.value,
            s.forced.value if s.forced else "",
            f"{s.success_rate:.0%}",
            latency,
            f"{s.in_flight}" + (f"/{dep.max_concurrency}" if dep.max_concurrency else ""),
            f"{s.requests_in_window}" + (f"/{dep.rpm}" if dep.rpm else ""),
            f"{s.tokens_in_window}" + (f"/{dep.tpm}" if dep.tpm else ""),
        )
    console.print(table)


def _deployment_view(dep: Deployment, s: DeploymentSnapshot) -> dict[str, Any]:
    """One deployment's line of `routeq deployments list --json`."""
    return {
        "id": dep.id,
        "circuit": s.circuit.value,
        "forced": None if s.forced is None else s.forced.value,
        "success_rate": s.success_rate,
        "latency_ewma_ms": s.latency_ewma_ms,
        "in_flight": s.in_flight,
        "max_concurrency": dep.max_concurrency,
        "requests_in_window": s.requests_in_window,
        "rpm": dep.rpm,
        "tokens_in_window": s.tokens_in_window,
        "tpm": dep.tpm,
    }


def _force(deployment: str, state: Forced | None) -> None:
    from storage.fleet.state import RedisFleetState  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()
    catalog = live_or_file_catalog(settings)
    if deployment not in catalog:
        raise fail(f"unknown deployment {deployment!r}; known: {', '.join(catalog)}", code=1)

    async def go(redis: Redis) -> None:
        await RedisFleetState(redis).force(deployment, state)
        what = {None: "back under its circuit breaker", Forced.DOWN: "down", Forced.UP: "up"}[state]
        console.print(f"{deployment} is {what} for every worker")

    execute(_with_redis(settings, go))


@deployments_app.command()
def down(deployment: DeploymentArg) -> None:
    """Take a deployment out of routing (maintenance) until `routeq deployments auto`."""
    _force(deployment, Forced.DOWN)


@deployments_app.command()
def up(deployment: DeploymentArg) -> None:
    """Route to a deployment whatever its breaker says, until `routeq deployments auto`."""
    _force(deployment, Forced.UP)


@deployments_app.command()
def auto(deployment: DeploymentArg) -> None:
    """Clear a forced state: the circuit breaker decides again."""
    _force(deployment, None)


def _budgets(redis: Redis, settings: Settings) -> Budgets:
    from storage.fleet.budgets import Budgets  # noqa: PLC0415 - start-up: imported on use

    return Budgets(redis, default_user_cap_usd=settings.default_user_budget_usd, zone=settings.budget_zone())


def _scope(typed: str) -> tuple[str, str]:
    """The scope an operator typed, as stored (names encoded) and as shown (escaped for rich)."""
    from storage.fleet.budgets import parse_scope, readable_scope  # noqa: PLC0415 - start-up: imported on use

    try:
        scope = parse_scope(typed)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return scope, escape(readable_scope(scope))


@budget_app.command()
def show(
    scope: Annotated[
        str | None,
        typer.Argument(help="One scope (as `budget set` takes it); none: every cap set, of every period."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """A scope's cap, settled spend and calls in flight (held), with its period caps; or every cap
    operators set, each with its period, when the current period began, spend in it and what is left."""
    from storage.fleet.budgets import readable_scope  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()
    if scope is None:
        _show_every_cap(settings, as_json)
        return
    stored, shown = _scope(scope)

    async def go(redis: Redis) -> tuple[ScopeUsage, list[ScopeUsage]]:
        budgets = _budgets(redis, settings)
        periods = [u for u in await budgets.every_cap_usage() if u.scope == stored and u.period_start]
        return await budgets.usage(stored), periods

    usage, periods = execute(_with_redis(settings, go))
    if as_json:
        view: dict[str, Any] = {
            "scope": readable_scope(stored),
            "spent_usd": usage.spent_usd,
            "held_usd": usage.reserved_usd,
            "cap_usd": usage.cap_usd,
        }
        if periods:  # only then: the document of a scope without period caps is as it always was
            view["periods"] = [_cap_view(u) for u in periods]
        print_json(view)
        return
    cap = "none" if usage.cap_usd is None else f"${usage.cap_usd:.4f}"
    console.print(f"{shown}: spent ${usage.spent_usd:.4f}, held ${usage.reserved_usd:.4f}, cap {cap}")
    for u in periods:
        console.print(
            f"{shown} {u.period.value} from {_start(u)}: spent ${u.spent_usd:.4f}, "
            f"held ${u.reserved_usd:.4f}, cap ${u.cap_usd or 0:.4f}, remaining ${u.remaining_usd or 0:.4f}"
        )


def _show_every_cap(settings: Settings, as_json: bool) -> None:
    """`routeq budget show` without a scope: one row per cap set, of every period."""
    from storage.fleet.budgets import readable_scope  # noqa: PLC0415 - start-up: imported on use

    async def go(redis: Redis) -> list[ScopeUsage]:
        return await _budgets(redis, settings).every_cap_usage()

    caps = execute(_with_redis(settings, go))
    if as_json:
        print_json({"timezone": settings.budget_timezone, "caps": [_cap_view(u) for u in caps]})
        return
    table = Table(title=f"budget caps (periods start at midnight, {settings.budget_timezone})")
    for column in ("scope", "period", "since", "spent", "held", "cap", "remaining"):
        table.add_column(column)
    for u in caps:
        table.add_row(
            escape(readable_scope(u.scope)),
            u.period.value,
            _start(u),
            f"${u.spent_usd:.4f}",
            f"${u.reserved_usd:.4f}",
            f"${u.cap_usd or 0:.4f}",
            f"${u.remaining_usd or 0:.4f}",
        )
    console.print(table)
    if not caps:
        console.print("no caps set: users have ROUTEQ_DEFAULT_USER_BUDGET_USD each (`routeq budget set`)")


def _start(usage: ScopeUsage) -> str:
    """The local date the usage's period began (`-` for a lifetime cap)."""
    return "-" if usage.period_start is None else usage.period_start.date().isoformat()


def _cap_view(usage: ScopeUsage) -> dict[str, Any]:
    """One cap in `routeq budget show --json`."""
    from storage.fleet.budgets import readable_scope  # noqa: PLC0415 - start-up: imported on use

    return {
        "scope": readable_scope(usage.scope),
        "period": usage.period.value,
        "period_start": None if usage.period_start is None else usage.period_start.isoformat(),
        "period_end": None if usage.period_end is None else usage.period_end.isoformat(),
        "spent_usd": usage.spent_usd,
        "held_usd": usage.reserved_usd,
        "cap_usd": usage.cap_usd,
        "remaining_usd": usage.remaining_usd,
    }


@budget_app.command("set")
def set_cap(
    scope: ScopeArg,
    cap_usd: Annotated[float, typer.Argument(min=0, callback=finite_usd, help="The cap in USD.")],
    period: PeriodOption = BudgetPeriod.LIFETIME,
) -> None:
    """Set a scope's spend cap of one period for the whole fleet (a lifetime cap of a user replaces the
    default). A period cap counts the period's spend so far."""
    settings = load_settings()
    stored, shown = _scope(scope)

    async def go(redis: Redis) -> None:
        await _budgets(redis, settings).set_cap(stored, cap_usd, period)
        what = "" if period is BudgetPeriod.LIFETIME else f" {period.value}"
        console.print(f"{shown}:{what} cap ${cap_usd:.4f}")

    execute(_with_redis(settings, go))


@budget_app.command()
def unset(scope: ScopeArg, period: PeriodOption = BudgetPeriod.LIFETIME) -> None:
    """Remove a scope's own cap of one period (users fall back to ROUTEQ_DEFAULT_USER_BUDGET_USD)."""
    settings = load_settings()
    stored, shown = _scope(scope)

    async def go(redis: Redis) -> None:
        await _budgets(redis, settings).set_cap(stored, None, period)
        what = "own cap" if period is BudgetPeriod.LIFETIME else f"{period.value} cap"
        console.print(f"{shown}: {what} removed")

    execute(_with_redis(settings, go))


@budget_app.command()
def rebuild() -> None:
    """Recompute every scope's spend in Redis from the SQL ledger, over its life and in the current
    day, week and month (run while workers are idle)."""
    from storage.fleet.budgets import readable_scope  # noqa: PLC0415 - start-up: imported on use
    from storage.sql.store import Store  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()

    async def go(redis: Redis) -> None:
        store = await Store.open(settings.database_url)
        try:
            budgets = _budgets(redis, settings)
            spent = await budgets.rebuild_from_ledger(store)
            periods = await budgets.rebuild_periods_from_ledger(store)
        finally:
            await store.close()
        for scope, usd in sorted(spent.items()):
            console.print(f"{escape(readable_scope(scope))}: spent ${usd:.4f}")
        console.print(
            f"{len(spent)} scopes rebuilt from the ledger, and {len(periods)} counters of the current day, "
            "week and month"
        )

    execute(_with_redis(settings, go))
