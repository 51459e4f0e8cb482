"""`routeq tenant`: a tenant's settings (show) and its default strategy (set-default-strategy).

Operator commands: they read and write the SQL store (ROUTEQ_DATABASE_URL) for any tenant, as the
CLI does everywhere. API processes see a new default within `TENANT_DEFAULT_TTL_S` (5 s); jobs
already made keep the strategy they were given. SQLAlchemy is imported when a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from producer.cli._common import JsonFlag, execute, fail, load_settings, print_json, with_store

if TYPE_CHECKING:
    from storage.sql.store import Store

__all__ = ["tenant_app"]

console = Console(emoji=False, highlight=False)

tenant_app = typer.Typer(help="A tenant's settings: its default strategy, its rate limits.")

TenantArg = Annotated[str, typer.Argument(help="The tenant (as API keys and ROUTEQ_TENANT name it).")]


@tenant_app.command()
def show(tenant: TenantArg, as_json: JsonFlag = False) -> None:
    """The tenant's default strategy (and what a request naming none gets, from where) and its rate limits."""
    from producer.strategy_defaults import tenant_settings_view  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()

    async def read(store: Store) -> dict[str, Any]:
        default = await store.api_keys.default_strategy(tenant)
        limits = await store.api_keys.tenant_limits(tenant)
        return tenant_settings_view(tenant, default, settings.default_strategy, limits)

    view = execute(with_store(settings, read))
    if as_json:
        print_json(view)
        return
    _print(view)


def _print(view: dict[str, Any]) -> None:
    effective = view["effective_default_strategy"]
    limits = [f"{name} {value}" for name, value in view["rate_limits"].items() if value is not None]
    lines = [
        f"tenant {view['tenant']}",
        f"  default strategy: {view['default_strategy'] or '- (none of its own)'}",
        f"  a request naming no strategy gets: {effective['strategy']} (from the {effective['source']})",
        f"  ROUTEQ_DEFAULT_STRATEGY: {view['environment_default_strategy'] or '- (unset: balanced)'}",
        f"  rate limits over all its keys: {', '.join(limits) or 'none'}",
    ]
    for line in lines:
        console.print(line, markup=False)


@tenant_app.command("set-default-strategy")
def set_default_strategy(
    tenant: TenantArg,
    strategy: Annotated[
        str,
        typer.Argument(
            help="cost, speed, quality, balanced, round_robin, least_loaded, ensemble, escalate (or the "
            "aliases fast, accurate); 'none' clears it."
        ),
    ],
) -> None:
    """Set the strategy of the tenant's requests that name none (the request's own still wins)."""
    from router_core.policy import parse_default_strategy  # noqa: PLC0415 - start-up: imported on use

    chosen = None
    if strategy.strip().lower() != "none":
        try:
            chosen = parse_default_strategy(strategy)
        except ValueError as exc:
            raise fail(f"STRATEGY: {exc}") from None
    settings = load_settings()
    execute(with_store(settings, lambda store: store.api_keys.set_default_strategy(tenant, chosen)))
    shown = "none (requests naming no strategy get ROUTEQ_DEFAULT_STRATEGY, else balanced)"
    console.print(
        f"tenant {tenant}: default strategy {shown if chosen is None else chosen.value}", markup=False
    )
