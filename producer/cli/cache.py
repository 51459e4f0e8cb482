"""`routeq cache`: what the response cache did (stats), forgetting a tenant's answers (clear) and a
tenant's cache defaults (policy).

Operator commands: they read and write the SQL store (ROUTEQ_DATABASE_URL) for any tenant, as the
CLI does everywhere. Workers see a policy change or a clear within seconds (they read a tenant's
policy again every few seconds). SQLAlchemy is imported when a command runs, not for `--help`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from producer.cli._common import JsonFlag, execute, load_settings, print_json, with_store

if TYPE_CHECKING:
    from storage.sql.store import Store

__all__ = ["cache_app"]

console = Console(emoji=False, highlight=False)

cache_app = typer.Typer(help="The response cache: hits and dollars saved, clearing, per-tenant policy.")

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _since(value: str | None) -> datetime | None:
    """`--since`: an ISO time (UTC when it has no offset) or a duration back from now (30m, 24h, 7d)."""
    if value is None:
        return None
    if match := _AGO.match(value.strip()):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither an ISO time (2026-11-30T12:00) nor a duration (30m, 24h, 7d)",
            param_hint="--since",
        ) from None
    return parsed.replace(tzinfo=parsed.tzinfo or UTC).astimezone(UTC)


def _similarity(value: float | None) -> float | None:
    """`--threshold`: a cosine similarity above 0, at most 1."""
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"must be above 0 and at most 1, not {value}")
    return value


@cache_app.command()
def stats(
    tenant: Annotated[str | None, typer.Option(help="One tenant (default: every tenant).")] = None,
    since: Annotated[
        str | None, typer.Option(help="Jobs finished since: an ISO time or a duration (30m, 24h, 7d).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Jobs that used the cache, hits (exact, semantic), misses, hit rate and dollars saved."""
    from producer.cache_views import stats_view  # noqa: PLC0415 - start-up: imported on use
    from storage.jobs import ANY_TENANT  # noqa: PLC0415 - start-up: imported on use

    start = _since(since)

    async def go(store: Store) -> dict[str, Any]:
        return stats_view(tenant, start, await store.cache.stats(tenant or ANY_TENANT, since=start))

    view = execute(with_store(load_settings(), go))
    if as_json:
        print_json(view)
        return
    who = f"tenant {view['tenant']}" if tenant else "every tenant"
    when = f" since {view['since']}" if start else ""
    console.print(f"cache of {who}{when}:", markup=False)
    console.print(
        f"  {view['jobs']} jobs used it: {view['hits']} hits ({view['semantic_hits']} semantic), "
        f"{view['misses']} misses, hit rate {view['hit_rate']:.1%}",
        markup=False,
    )
    console.print(f"  saved ${view['saved_usd']:.6f}; {view['entries']} answers servable", markup=False)


@cache_app.command()
def clear(
    tenant: Annotated[str, typer.Option(help="The tenant whose cached answers stop being served.")],
) -> None:
    """Stop serving every answer the tenant has cached so far (jobs keep their results)."""

    async def go(store: Store) -> datetime:
        return await store.cache.clear(tenant)

    cleared = execute(with_store(load_settings(), go))
    console.print(f"cache of tenant {tenant} cleared at {cleared.isoformat()}", markup=False)


@cache_app.command()
def policy(
    *,
    tenant: Annotated[str, typer.Option(help="The tenant whose defaults to show or change.")],
    enabled: Annotated[
        bool | None, typer.Option("--on/--off", help="Use the cache by default, or not.", show_default=False)
    ] = None,
    ttl: Annotated[int | None, typer.Option(min=1, help="Oldest answer served, in seconds.")] = None,
    semantic: Annotated[
        bool | None,
        typer.Option(
            "--semantic/--no-semantic", help="Also serve similar prompts' answers.", show_default=False
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(callback=_similarity, help="Least similarity of a semantic hit, in (0, 1]."),
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Back to the fleet's defaults (a clear stays).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show a tenant's cache defaults; with a flag, change it (the others stay as they are)."""
    from producer.cache_views import policy_view  # noqa: PLC0415 - start-up: imported on use
    from storage.sql.cache import TenantCachePolicy  # noqa: PLC0415 - start-up: imported on use

    changes = {"enabled": enabled, "ttl_s": ttl, "semantic": semantic, "threshold": threshold}
    changes = {name: value for name, value in changes.items() if value is not None}
    if reset and changes:
        raise typer.BadParameter("--reset sets every default back: give it alone", param_hint="--reset")
    settings = load_settings()

    async def go(store: Store) -> dict[str, Any]:
        if reset or changes:
            row = None if reset else await store.cache.policy(tenant)
            kept = row.overrides() if row is not None else {}
            await store.cache.set_policy(TenantCachePolicy(tenant, **(kept | changes)))
        return policy_view(tenant, await store.cache.policy(tenant), settings.cache_policy())

    view = execute(with_store(settings, go))
    if as_json:
        print_json(view)
        return
    console.print(f"cache policy of tenant {tenant}:", markup=False)
    effective = view["effective"]
    for name in ("enabled", "ttl_s", "semantic", "threshold"):
        own = view[name]
        origin = "fleet default" if own is None else "tenant"
        console.print(f"  {name:<9} {effective[name]}  ({origin})", markup=False)
    if view["cleared_at"] is not None:
        console.print(f"  last cleared {view['cleared_at']}", markup=False)
