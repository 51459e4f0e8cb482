"""Commands that need no fleet: `routeq sim`, `routeq catalog` and `routeq migrate`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from producer.cli._common import execute, load_settings, with_store
from router_core.errors import ConfigError
from router_core.redact import mask_url

if TYPE_CHECKING:
    from router_core.catalog import Catalog

__all__ = ["catalog", "load_catalog_or_exit", "migrate", "sim"]

console = Console()
err_console = Console(stderr=True)


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
) -> None:
    """Validate a catalog and show its deployments, their resolved prices and the features they honour."""
    from router_core.chat import Feature  # noqa: PLC0415 - start-up: imported on use

    cat = load_catalog_or_exit(path)
    table = Table(title=f"catalog {cat.source}")
    columns = (
        "id",
        "kind",
        "task",
        "provider",
        "model",
        "quality",
        "$ in/Mtok",
        "$ out/Mtok",
        "price source",
        "features",
    )
    for column in columns:
        table.add_column(column)
    for d in cat.values():
        price = cat.price(d.id)
        table.add_row(
            d.id,
            d.kind.value,
            d.task.value + (f" ({d.dimensions} dims)" if d.dimensions else ""),
            d.provider,
            d.model,
            f"{d.quality:.2f}",
            f"{price.input_per_token * 1e6:.3f}",
            f"{price.output_per_token * 1e6:.3f}",
            price.source,
            ", ".join(f.value for f in Feature if f in d.features) or "-",  # as exclusions name them
        )
    console.print(table)


def migrate() -> None:
    """Bring the database schema to the newest migration (workers also do this at start-up)."""
    settings = load_settings()
    execute(with_store(settings, lambda store: asyncio.sleep(0)))
    console.print(f"database schema is current: {mask_url(settings.database_url)}")


def load_catalog_or_exit(path: Path | None) -> Catalog:
    """The catalog, or one clear error line and exit status 2."""
    from router_core.catalog import load_catalog  # noqa: PLC0415 - genai-prices: commands with a catalog
    from router_core.settings import RouterSettings  # noqa: PLC0415 - start-up: imported on use

    try:
        return load_catalog(path if path is not None else RouterSettings().catalog_path)
    except ConfigError as exc:
        err_console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from exc
