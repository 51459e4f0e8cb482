"""Commands that need no fleet: `routeq sim`, `routeq catalog` and `routeq migrate`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from producer.cli._common import (
    JsonFlag,
    execute,
    load_catalog_or_exit,
    load_settings,
    print_json,
    settings_or_exit,
    with_store,
)
from router_core.redact import mask_url

__all__ = ["catalog", "load_catalog_or_exit", "migrate", "sim"]

console = Console()


def sim(
    port: Annotated[int, typer.Option(help="Loopback port to listen on.")] = 8900,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    catalog: Annotated[
        Path | None, typer.Option(help="Catalog TOML (default: ROUTEQ_CATALOG_PATH or demo).")
    ] = None,
) -> None:
    """Serve the simulated provider world over HTTP (OpenAI and Anthropic wire formats)."""
    from router_core.providers import sim_world_for  # noqa: PLC0415 - the provider SDKs: `sim` only
    from router_core.sim import serve  # noqa: PLC0415 - uvicorn: `sim` only

    cat = load_catalog_or_exit(catalog)
    world = sim_world_for(cat)
    console.print(f"routeq sim: {len(cat)} deployments on http://{host}:{port}/<deployment>/v1")
    asyncio.run(serve(world, host=host, port=port))


def catalog(
    path: Annotated[
        Path | None, typer.Argument(help="Catalog TOML (default: ROUTEQ_CATALOG_PATH or demo).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate a catalog and show its deployments, resolved prices, features and which are simulated."""
    from producer.cli.catalog_view import catalog_rows, catalog_tables  # noqa: PLC0415 - on use
    from router_core.settings import RouterSettings  # noqa: PLC0415 - start-up: imported on use
    from router_core.simulated import simulated_ids, simulated_note  # noqa: PLC0415 - on use

    cat = load_catalog_or_exit(path)
    mode = settings_or_exit(RouterSettings).simulate
    simulated = simulated_ids(cat, mode)
    if as_json:
        print_json(
            {"source": cat.source, "simulate": mode.value, "deployments": catalog_rows(cat, simulated)}
        )
        return
    for renderable in catalog_tables(cat, simulated, console):
        console.print(renderable)
    console.print(f"deployments: {simulated_note(cat, simulated, mode)}", highlight=False, markup=False)


def migrate() -> None:
    """Bring the database schema to the newest migration (workers also do this at start-up)."""
    settings = load_settings()
    execute(with_store(settings, lambda store: asyncio.sleep(0)))
    console.print(f"database schema is current: {mask_url(settings.database_url)}")
