"""The `routeq` command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from producer import admin, commands, serving
from router_core import Catalog, ConfigError, RouterSettings, load_catalog
from router_core.providers import sim_world_for
from router_core.sim import serve

__all__ = ["app", "main"]

app = typer.Typer(help="routeq: route batches of LLM prompts across providers.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


@app.command()
def sim(
    port: Annotated[int, typer.Option(help="Loopback port to listen on.")] = 8900,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    catalog: Annotated[
        Path | None, typer.Option(help="Catalog TOML (default: ROUTEQ_CATALOG_PATH or demo).")
    ] = None,
) -> None:
    """Serve the simulated provider world over HTTP (OpenAI and Anthropic wire formats)."""
    cat = load_catalog_or_exit(catalog)
    world = sim_world_for(cat)
    console.print(f"routeq sim: {len(cat)} deployments on http://{host}:{port}/<deployment>/v1")
    asyncio.run(serve(world, host=host, port=port))


@app.command()
def catalog(
    path: Annotated[
        Path | None, typer.Argument(help="Catalog TOML (default: ROUTEQ_CATALOG_PATH or demo).")
    ] = None,
) -> None:
    """Validate a catalog and show its deployments with their resolved prices."""
    cat = load_catalog_or_exit(path)
    table = Table(title=f"catalog {cat.source}")
    for column in ("id", "kind", "provider", "model", "quality", "$ in/Mtok", "$ out/Mtok", "price source"):
        table.add_column(column)
    for d in cat.values():
        price = cat.price(d.id)
        table.add_row(
            d.id,
            d.kind.value,
            d.provider,
            d.model,
            f"{d.quality:.2f}",
            f"{price.input_per_token * 1e6:.3f}",
            f"{price.output_per_token * 1e6:.3f}",
            price.source,
        )
    console.print(table)


for command in (
    commands.run,
    commands.submit,
    commands.status,
    commands.results,
    commands.watch,
    commands.cancel,
    commands.requeue,
    commands.worker,
    commands.migrate,
    serving.serve,
):
    app.command()(command)
app.add_typer(admin.deployments_app, name="deployments")
app.add_typer(admin.budget_app, name="budget")
app.add_typer(serving.keys_app, name="keys")


def load_catalog_or_exit(path: Path | None) -> Catalog:
    """The catalog, or one clear error line and exit status 2."""
    try:
        return load_catalog(path if path is not None else RouterSettings().catalog_path)
    except ConfigError as exc:
        err_console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from exc


def main() -> None:
    app()
