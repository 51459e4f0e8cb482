"""What `routeq catalog` shows: one table with every column, or a narrow one for 80 columns.

On a terminal wide enough for every column at its natural width, every field is a column.
Narrower, rich would squeeze the long fields (kind, task, provider, price source and the
feature list) to a few characters each, so the table keeps what tells deployments apart (id,
model, quality, prices, simulated) and each deployment's long fields follow as one wrapped line.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from router_core.catalog import Catalog, Deployment
from router_core.chat import Feature

__all__ = ["catalog_rows", "catalog_tables"]


def _features(dep: Deployment) -> str:
    # In Feature's order, as the planner's exclusions name them.
    return ", ".join(f.value for f in Feature if f in dep.features) or "-"


def _task(dep: Deployment) -> str:
    return dep.task.value + (f" ({dep.dimensions} dims)" if dep.dimensions else "")


def catalog_rows(cat: Catalog, simulated: frozenset[str]) -> list[dict[str, Any]]:
    """Every deployment as `routeq catalog --json` prints it."""
    rows = []
    for d in cat.values():
        price = cat.price(d.id)
        rows.append(
            {
                "id": d.id,
                "kind": d.kind.value,
                "task": d.task.value,
                "dimensions": d.dimensions,
                "provider": d.provider,
                "model": d.model,
                "quality": d.quality,
                "input_per_mtok_usd": price.input_per_token * 1e6,
                "output_per_mtok_usd": price.output_per_token * 1e6,
                "price_source": price.source,
                "features": [f.value for f in Feature if f in d.features],
                "simulated": d.id in simulated,
            }
        )
    return rows


def catalog_tables(cat: Catalog, simulated: frozenset[str], console: Console) -> list[RenderableType]:
    """The catalog as `console` can show it: every column when they fit unsqueezed, else narrow."""
    wide = _wide(cat, simulated)
    if Measurement.get(console, console.options.update_width(10_000), wide).maximum <= console.width:
        return [wide]
    return _narrow(cat, simulated)


def _wide(cat: Catalog, simulated: frozenset[str]) -> Table:
    table = Table(title=f"catalog {cat.source}")
    for column in ("id", "kind", "task", "provider", "model", "quality", "$ in/Mtok", "$ out/Mtok"):
        table.add_column(column)
    for column in ("price source", "simulated", "features"):
        table.add_column(column)
    for d in cat.values():
        price = cat.price(d.id)
        table.add_row(
            *(escape(cell) for cell in (d.id, d.kind.value, _task(d), d.provider, d.model)),
            f"{d.quality:.2f}",
            f"{price.input_per_token * 1e6:.3f}",
            f"{price.output_per_token * 1e6:.3f}",
            escape(price.source),
            "yes" if d.id in simulated else "no",
            _features(d),
        )
    return table


def _narrow(cat: Catalog, simulated: frozenset[str]) -> list[RenderableType]:
    table = Table(title=f"catalog {cat.source}", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("q", justify="right")
    table.add_column("$ in", justify="right")
    table.add_column("$ out", justify="right")
    table.add_column("sim", justify="center")
    for d in cat.values():
        price = cat.price(d.id)
        table.add_row(
            escape(d.id),
            escape(d.model),
            f"{d.quality:.2f}",
            f"{price.input_per_token * 1e6:.3f}",
            f"{price.output_per_token * 1e6:.3f}",
            "yes" if d.id in simulated else "no",
        )
    table.caption = "$ per million tokens; q = quality; sim = served by the simulated world"
    details: list[RenderableType] = [table]
    for d in cat.values():
        line = Text.assemble(
            (d.id, "bold"),
            f": {d.kind.value} {_task(d)} at {d.provider}, price {cat.price(d.id).source}; ",
            f"features: {_features(d)}",
        )
        line.stylize("dim", len(d.id))
        details.append(line)
    return details
