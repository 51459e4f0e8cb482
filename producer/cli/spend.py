"""`routeq spend`: what each user, API key or batch spent, from the SQL ledger (as `GET /v1/spend`).

The window is the current day, week (from Monday) or month in ROUTEQ_BUDGET_TIMEZONE, or from
`--since`. The CLI reads the database directly, like an operator: any tenant, or every one.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from producer.cli._common import JsonFlag, execute, load_settings, print_json, with_store
from router_core.periods import BudgetPeriod, period_bounds
from storage.sql.spend import SpendGroup, SpendRow

if TYPE_CHECKING:
    from storage.sql.store import Store

__all__ = ["spend"]

console = Console(emoji=False)


class Window(enum.StrEnum):
    """`--period`: the current one, started at local midnight."""

    TODAY = "today"
    WEEK = "week"
    MONTH = "month"


_PERIODS = {
    Window.TODAY: BudgetPeriod.DAILY,
    Window.WEEK: BudgetPeriod.WEEKLY,
    Window.MONTH: BudgetPeriod.MONTHLY,
}


def spend(
    group_by: Annotated[
        SpendGroup, typer.Option("--group-by", help="user, key (API key id; none: CLI jobs) or batch.")
    ],
    *,
    period: Annotated[
        Window, typer.Option("--period", help="The current day, week or month (ROUTEQ_BUDGET_TIMEZONE).")
    ] = Window.MONTH,
    since: Annotated[
        datetime | None, typer.Option("--since", help="From this time instead (UTC unless it says).")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="One tenant (default: ROUTEQ_TENANT).")
    ] = None,
    all_tenants: Annotated[bool, typer.Option("--all-tenants", help="Every tenant.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Rows, biggest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Spend per user, API key or batch from the ledger: cost, jobs charged and tokens, biggest first."""
    from storage.sql.spend import spend_by  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()
    now = datetime.now(UTC)
    start = since.replace(tzinfo=since.tzinfo or UTC) if since is not None else None
    start = start or period_bounds(_PERIODS[period], now, settings.budget_zone())[0]
    who = None if all_tenants else tenant or settings.tenant

    async def go(store: Store) -> tuple[list[SpendRow], bool]:
        return await spend_by(store, group_by, tenant=who, since=start, until=now, limit=limit)

    rows, more = execute(with_store(settings, go))
    if as_json:
        print_json(
            {
                "group_by": group_by.value,
                "tenant": who,
                "since": start.isoformat(),
                "until": now.isoformat(),
                "data": [
                    {
                        "group": r.group,
                        "tenant": r.tenant,
                        "cost_usd": float(r.cost_usd),
                        "requests": r.requests,
                        "tokens": r.tokens,
                    }
                    for r in rows
                ],
                "has_more": more,
            }
        )
        return
    table = Table(title=f"spend per {group_by.value} since {start:%Y-%m-%d %H:%M %Z}")
    for column in ("tenant", group_by.value, "cost", "requests", "tokens"):
        table.add_column(column)
    for r in rows:
        name = "(no key)" if r.group is None else r.group
        table.add_row(escape(r.tenant), escape(name), f"${r.cost_usd:.4f}", str(r.requests), str(r.tokens))
    console.print(table)
    if more:
        console.print(f"showing the {limit} biggest: --limit for more")
