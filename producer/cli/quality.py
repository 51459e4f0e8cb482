"""`routeq feedback` and `routeq quality`: rate a job's answer, list ratings, and see what routing
learned about each deployment's quality.

Operator commands on the SQL store (ROUTEQ_DATABASE_URL), like the rest of the CLI; with
ROUTEQ_REDIS_URL set, a rating also tells the fleet at once (workers plan with it within
`ROUTEQ_QUALITY_REFRESH_S`; without Redis, the fleet's cached scores catch up within minutes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from producer.cli._common import JsonFlag, execute, load_settings, optional_redis, print_json, with_store

if TYPE_CHECKING:
    from storage.fleet.quality import FleetQuality
    from storage.settings import Settings
    from storage.sql.store import Store

__all__ = ["feedback", "quality"]

console = Console(emoji=False, highlight=False)
T = TypeVar("T")


def feedback(
    job_id: Annotated[str | None, typer.Argument(help="The job to rate (or whose ratings to list).")] = None,
    *,
    rating: Annotated[int | None, typer.Option(min=1, max=5, help="1-5 stars.")] = None,
    thumbs: Annotated[str | None, typer.Option(help="up or down, instead of stars.")] = None,
    category: Annotated[str | None, typer.Option(help="What it is about: wrong, slow, format...")] = None,
    comment: Annotated[str | None, typer.Option(help="Free text.")] = None,
    tenant: Annotated[str, typer.Option(help="The job's tenant.")] = "default",
    user: Annotated[str, typer.Option(help="Who rates (default: ROUTEQ_USER).")] = "",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Ratings listed at most.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Rate a job's answer (--rating N or --thumbs up|down), or list the tenant's ratings (newest first)."""
    if thumbs is not None and thumbs not in ("up", "down"):
        raise typer.BadParameter(f"must be 'up' or 'down', not {thumbs!r}", param_hint="--thumbs")
    settings = load_settings()
    if rating is None and thumbs is None:
        view = execute(with_store(settings, lambda store: _history(store, tenant, job_id, limit)))
        _print_history(view, as_json=as_json)
        return
    if job_id is None:
        raise typer.BadParameter("name the job to rate", param_hint="JOB_ID")
    fields: dict[str, Any] = {
        "tenant": tenant,
        "user_id": user or settings.user,
        "job_id": job_id,
        "rating": rating,
        "thumbs": thumbs,
        "category": category,
        "comment": comment,
    }

    async def rate(store: Store) -> dict[str, Any]:
        made = await _with_fleet_quality(settings, store, lambda q: q.add_feedback(**fields))
        return made.as_json()

    made = execute(with_store(settings, rate))
    if as_json:
        print_json(made)
        return
    console.print(
        f"rated job {made['job_id']} ({made['deployment']}): score {made['score']:.2f}, id {made['id']}",
        markup=False,
    )


def quality(as_json: JsonFlag = False) -> None:
    """Each deployment's catalog quality (prior) next to the score learned from judges, reference
    sets and ratings, with the samples behind it."""
    from producer.quality_views import quality_view  # noqa: PLC0415 - start-up: imported on use
    from router_core.catalog import load_catalog  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()

    async def read(store: Store) -> dict[str, Any]:
        board = await _with_fleet_quality(settings, store, lambda q: q.board())
        return quality_view(load_catalog(settings.catalog_path), board)

    view = execute(with_store(settings, read))
    if as_json:
        print_json(view)
        return
    table = Table(title=f"quality (prior counts as {view['prior_strength']:g} samples)")
    for name, justify in (
        ("deployment", "left"),
        ("prior", "right"),
        ("learned", "right"),
        ("samples", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("by capability: learned (samples)")
    for row in view["data"]:
        caps = ", ".join(
            f"{c['capability']} {c['learned']:.2f} ({c['samples']})" for c in row["capabilities"]
        )
        learned = f"{row['learned']:.2f}" if row["source"] == "learned" else "-"
        table.add_row(row["deployment"], f"{row['prior']:.2f}", learned, str(row["samples"]), caps)
    console.print(table)


async def _history(store: Store, tenant: str, job_id: str | None, limit: int) -> dict[str, Any]:
    from producer.quality_views import feedback_list_view  # noqa: PLC0415 - start-up: imported on use

    items = await store.quality.history(tenant, job_id=job_id, limit=limit)
    return feedback_list_view(items, limit=limit)


def _print_history(view: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(view)
        return
    if not view["data"]:
        console.print("no feedback", markup=False)
        return
    table = Table()
    for name in ("created", "job", "user", "deployment", "rating", "score", "category", "comment"):
        table.add_column(name)
    for f in view["data"]:
        stars: Literal["up", "down"] | int | None = f["rating"] or f["thumbs"]
        table.add_row(
            str(f["created_at"]),
            f["job_id"],
            f["user"],
            f["deployment"],
            str(stars),
            f"{f['score']:.2f}",
            f["category"] or "",
            f["comment"] or "",
        )
    console.print(table)


async def _with_fleet_quality(
    settings: Settings, store: Store, action: Callable[[FleetQuality], Awaitable[T]]
) -> T:
    """Run `action(FleetQuality)` with the fleet's Redis when one is configured, else on SQL alone."""
    from storage.fleet.quality import FleetQuality  # noqa: PLC0415 - start-up: imported on use

    async with optional_redis(settings) as redis:
        return await action(FleetQuality.from_settings(redis, store, settings))
