"""`routeq plan`: route without running. The plan a worker would follow for a prompt, or for every
line of a JSONL file, with no job queued and no provider called.

With ROUTEQ_REDIS_URL set the plan uses the fleet's live state (open breakers, forced states,
latency and success rates); without, catalog priors and every breaker closed. Learned quality
scores come from the SQL store (ROUTEQ_DATABASE_URL) either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from producer.cli._common import execute, load_settings, optional_redis, with_store

if TYPE_CHECKING:
    from router_core.catalog import Catalog
    from router_core.models import ChatRequest
    from storage.settings import Settings
    from storage.sql.store import Store

__all__ = ["plan"]

console = Console(emoji=False, highlight=False)


def plan(
    target: Annotated[
        str, typer.Argument(help="A prompt, or a JSONL file of requests (routeq run's format).")
    ],
    *,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="For a prompt: the strategy (default: the tenant's, ROUTEQ_DEFAULT_STRATEGY or balanced)."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (one plan per line for a file).")
    ] = False,
) -> None:
    """Show the candidates in the order a worker would try them (estimated cost, latency, quality and
    the samples behind it) and every excluded deployment with its reason."""
    from producer.cli.live_catalog import live_or_file_catalog  # noqa: PLC0415 - start-up: on use

    settings = load_settings()
    path = Path(target)
    if path.suffix == ".jsonl" or path.is_file():
        from producer.cli.batches import _read_input  # noqa: PLC0415 - the file as `routeq run` reads it

        requests = [(item.custom_id, item.request) for item in _read_input(path, settings).items]
    else:
        requests = [("prompt", _prompt_request(target, strategy))]
    catalog = live_or_file_catalog(settings)  # as a worker plans: the live catalog, once seeded
    views = execute(with_store(settings, lambda store: _plans(settings, store, catalog, requests)))
    if as_json:
        for custom_id, view in views:
            print(json.dumps({"custom_id": custom_id, **view}))
    elif len(views) == 1:
        _print_plan(views[0][1])
    else:
        _print_summary(views)


def _prompt_request(text: str, strategy: str | None) -> ChatRequest:
    from router_core.errors import InvalidRequestError  # noqa: PLC0415 - start-up: imported on use
    from router_core.models import ChatRequest  # noqa: PLC0415 - start-up: imported on use

    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if strategy is not None:
        body["preferences"] = {"strategy": strategy}
    try:
        return ChatRequest.model_validate(body)
    except ValueError as exc:
        raise InvalidRequestError(f"--strategy {strategy!r}: {exc}", field="strategy") from None


async def _plans(
    settings: Settings, store: Store, catalog: Catalog, requests: list[tuple[str, ChatRequest]]
) -> list[tuple[str, dict[str, Any]]]:
    from producer.planning import Planner, plan_view  # noqa: PLC0415 - start-up: imported on use
    from producer.strategy_defaults import StrategyDefaults  # noqa: PLC0415 - start-up: imported on use

    # The strategy a request names none of: ROUTEQ_TENANT's default, as `routeq submit` would give it.
    resolve = await StrategyDefaults(store, settings.default_strategy).resolver(settings.tenant)
    async with optional_redis(settings) as redis:
        planner = Planner.from_settings(settings, store, redis)
        return [
            (cid, plan_view(await planner.preview(resolve(request), catalog))) for cid, request in requests
        ]


def _quality(c: dict[str, Any]) -> str:
    if c.get("quality_source") == "learned":
        return f"{c['quality']:.2f} ({c['quality_samples']} samples)"
    return f"{c['quality']:.2f} (catalog)"


def _print_plan(view: dict[str, Any]) -> None:
    if view["routable"]:
        console.print(
            f"strategy {view['strategy']} (from the {view.get('strategy_source') or 'default'}), "
            f"prompt classed {view['capability']} / {view['complexity']}, "
            f"~{view['prompt_tokens_estimate']} + {view['completion_tokens_estimate']} tokens",
            markup=False,
        )
        table = Table(title="candidates, in the order they are tried")
        for name in ("#", "deployment", "est. cost $", "est. latency ms", "quality", "score"):
            table.add_column(name, justify="left" if name == "deployment" else "right")
        for n, c in enumerate(view["candidates"], start=1):
            table.add_row(
                str(n),
                c["deployment"],
                f"{c['estimated_cost_usd']:.6f}",
                f"{c['estimated_latency_ms']:.0f}",
                _quality(c),
                f"{c['score']:.3f}",
            )
        console.print(table)
    else:
        console.print(f"[red]no route:[/red] {escape(view['message'])}")
    if view["excluded"]:
        excluded = Table(title="excluded")
        for name in ("deployment", "reason", "detail"):
            excluded.add_column(name)
        for e in view["excluded"]:
            excluded.add_row(e["deployment"], e["reason"], e["detail"])
        console.print(excluded)


def _print_summary(views: list[tuple[str, dict[str, Any]]]) -> None:
    table = Table(title=f"plans of {len(views)} requests")
    for name in ("custom_id", "primary", "then", "est. cost $", "quality"):
        table.add_column(name)
    for custom_id, view in views:
        if not view["routable"]:
            table.add_row(custom_id, "[red]no route[/red]", escape(view["message"][:60]), "", "")
            continue
        first, *rest = view["candidates"]
        table.add_row(
            escape(custom_id),
            first["deployment"],
            ", ".join(c["deployment"] for c in rest[:3]),
            f"{first['estimated_cost_usd']:.6f}",
            _quality(first),
        )
    console.print(table)
