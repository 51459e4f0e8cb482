"""`routeq replay BATCH`: a past batch re-planned under other strategies, next to what happened.

No provider is called and no fleet is needed: the batch's stored requests are planned again with
the current catalog (ROUTEQ_CATALOG_PATH) and the learned quality in SQL (`router_core.replay`
says how each figure is made). SQLAlchemy and the planner are imported when the command runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from producer.cli._common import execute, load_settings, with_store

if TYPE_CHECKING:
    from router_core.replay import ReplayReport, ReplayRow
    from storage.sql.store import Store

__all__ = ["replay"]

console = Console(emoji=False, highlight=False)

_DEFAULT = "cost,speed,quality,balanced,ensemble,escalate:fast,escalate:balanced,escalate:accurate"


def replay(
    batch: Annotated[str, typer.Argument(help="The batch id (batch_...) to replay.")],
    strategies: Annotated[
        str,
        typer.Option(
            help="Comma-separated strategies (aliases fast/accurate; escalate:fast|balanced|accurate)."
        ),
    ] = _DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Re-plan a batch's requests under each strategy (no provider calls): expected cost, latency and
    learned quality per strategy, next to what actually happened."""
    from router_core.catalog import load_catalog  # noqa: PLC0415 - start-up: imported on use
    from router_core.planner import PlanLimits  # noqa: PLC0415 - start-up: imported on use
    from router_core.replay import parse_variants  # noqa: PLC0415 - start-up: imported on use
    from storage.sql.replay import replay_batch  # noqa: PLC0415 - SQLAlchemy only when the command runs

    settings = load_settings()

    async def go(store: Store) -> ReplayReport:
        variants = parse_variants(strategies)
        return await replay_batch(
            store,
            batch,
            catalog=load_catalog(settings.catalog_path),
            variants=variants,
            strength=settings.quality_prior_strength,
            limits=PlanLimits(settings.default_completion_tokens, settings.max_candidates),
        )

    report = execute(with_store(settings, go))
    if as_json:
        print(json.dumps({"batch": batch, **report.as_json()}))
        return
    console.print(f"batch {batch}: {report.jobs} jobs re-planned with the current catalog", markup=False)
    console.print(_table(report.rows))
    console.print(
        "expected: each strategy's primary, at catalog prices for the prompt estimate + max_tokens "
        "(or the default completion size); compare with 'submitted' (the same estimate with each "
        "job's own preferences). quality: learned, for each prompt's capability. actual: billed cost, "
        "jobs answered ('no route': not answered).",
        markup=False,
    )


def _table(rows: list[ReplayRow]) -> Table:
    table = Table(title="strategy replay")
    for name in ("strategy", "jobs", "no route", "cost $", "mean latency ms", "mean quality", "mix"):
        table.add_column(name, justify="left" if name in ("strategy", "mix") else "right")
    for row in rows:
        table.add_row(
            row.name,
            str(row.jobs),
            str(row.unroutable),
            f"{row.cost_usd:.6f}",
            "-" if row.mean_latency_ms is None else f"{row.mean_latency_ms:.0f}",
            "-" if row.mean_quality is None else f"{row.mean_quality:.3f}",
            ", ".join(f"{d} {_share(share)}" for d, share in row.mix),
            end_section=row.name == "submitted",
        )
    return table


def _share(share: float) -> str:
    return f"{share:.0%}" if share >= 0.005 else "<1%"
