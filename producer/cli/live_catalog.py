"""`routeq deployments add|set|disable|enable|remove|import|export|history`: the live catalog.

The catalog the fleet routes with lives in SQL, one version per change (storage/fleet/catalog.py);
each command here validates the whole new catalog, commits it as the next version and tells every
worker and API process through Redis (ROUTEQ_REDIS_URL; without it, embedded processes read SQL).
Running workers use it within ROUTEQ_CATALOG_REFRESH_S, without a restart. Before the first
change, the configured catalog file (ROUTEQ_CATALOG_PATH, else the demo) seeds version 1.

Fields are given as `name=value`, the value in TOML (`quality=0.8`, `enabled=false`,
`capabilities=["code"]`, `sim={latency_ms=50}`); a value that is not TOML is a string
(`model=gpt-4o`); `name=` removes the field (back to its default).
"""

from __future__ import annotations

import getpass
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from producer.cli._common import (
    JsonFlag,
    execute,
    fail,
    load_catalog_or_exit,
    load_settings,
    optional_redis,
    print_json,
    with_store,
)
from router_core.errors import ConfigError

if TYPE_CHECKING:
    from router_core.catalog import Catalog
    from router_core.catalog_edit import Document
    from storage.fleet.catalog import Edit
    from storage.settings import Settings
    from storage.sql.catalog import CatalogVersion
    from storage.sql.store import Store

__all__ = [
    "add",
    "disable",
    "enable",
    "export",
    "history",
    "import_file",
    "live_or_file_catalog",
    "remove",
    "set_fields",
]

console = Console(emoji=False)

DeploymentArg = Annotated[str, typer.Argument(help="A deployment id of the live catalog.")]
FieldsArg = Annotated[
    list[str] | None, typer.Argument(help="name=value pairs, the value in TOML; name= removes the field.")
]
CommentOpt = Annotated[
    str, typer.Option("--comment", "-m", help="Why: kept with the version in the history.")
]
ExpectOpt = Annotated[
    int | None,
    typer.Option(
        "--expect", help="Apply only if this is still the newest version (else exit 1, nothing written)."
    ),
]


def live_or_file_catalog(settings: Settings) -> Catalog:
    """The live catalog's newest version, or the catalog file while SQL holds none (one line if bad)."""
    from storage.fleet.catalog import newest_catalog  # noqa: PLC0415 - on use

    file_catalog = load_catalog_or_exit()  # a bad file is one error line, live or not: it seeds the live one
    return execute(with_store(settings, newest_catalog)) or file_catalog


def parse_fields(pairs: list[str]) -> dict[str, Any]:
    """`name=value` pairs as a deployment's fields (see the module docstring); `typer.Exit` on a bad pair."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise fail(f"{pair!r} is not name=value (e.g. quality=0.8, enabled=false)")
        if value == "":
            fields[name] = None
            continue
        try:
            fields[name] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            fields[name] = value  # a bare word: a string, as a user typing model=gpt-4o means
    return fields


def _author() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def _change(edit: Edit, *, comment: str, expect: int | None, done: str) -> None:
    """Commit `edit` (seeding the catalog first if SQL has none) and print the version it made."""
    settings = load_settings()

    async def go(store: Store) -> CatalogVersion:
        from storage.errors import CatalogConflictError  # noqa: PLC0415 - start-up: imported on use
        from storage.fleet.catalog import commit_change, seed_catalog  # noqa: PLC0415 - on use

        async with optional_redis(settings) as redis:
            if not await store.catalog.newest_number():
                await seed_catalog(store, redis, settings.catalog_path)
            try:
                stored, _ = await commit_change(
                    store, redis, edit, author=_author(), comment=comment, expected=expect
                )
            except CatalogConflictError as exc:
                raise fail(str(exc), code=1) from None
            return stored

    stored = execute(with_store(settings, go))
    console.print(f"catalog version {stored.version}: {done}", highlight=False, markup=False)


def add(
    deployment: DeploymentArg,
    fields: FieldsArg = None,
    from_file: Annotated[
        Path | None,
        typer.Option("--from", help="A TOML file with the deployment's fields (no table header)."),
    ] = None,
    comment: CommentOpt = "",
    expect: ExpectOpt = None,
) -> None:
    """Add a deployment to the live catalog: `routeq deployments add fast kind=sim model=m ...`."""
    from router_core import catalog_edit  # noqa: PLC0415 - genai-prices: on use

    entry: dict[str, Any] = {}
    if from_file is not None:
        try:
            entry = tomllib.loads(from_file.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise fail(f"{from_file}: {exc}") from None
    entry = {"id": deployment, **entry, **parse_fields(fields or [])}
    entry = {k: v for k, v in entry.items() if v is not None}

    def edit(doc: Document) -> Any:
        return catalog_edit.add(doc, entry)

    _change(edit, comment=comment, expect=expect, done=f"added {deployment}")


def set_fields(
    deployment: DeploymentArg, fields: FieldsArg = None, comment: CommentOpt = "", expect: ExpectOpt = None
) -> None:
    """Change fields of a deployment: `routeq deployments set gpt-4o rpm=100 quality=0.8`."""
    from router_core import catalog_edit  # noqa: PLC0415 - genai-prices: on use

    changes = parse_fields(fields or [])
    if not changes:
        raise fail("name no field to change, e.g. quality=0.8")

    def edit(doc: Document) -> Any:
        return catalog_edit.change(doc, deployment, changes)

    _change(edit, comment=comment, expect=expect, done=f"changed {deployment} ({', '.join(changes)})")


def _enabled(deployment: str, enabled: bool, comment: str, expect: int | None) -> None:
    from router_core import catalog_edit  # noqa: PLC0415 - genai-prices: on use

    def edit(doc: Document) -> Any:
        return catalog_edit.change(doc, deployment, {"enabled": None if enabled else False})

    _change(edit, comment=comment, expect=expect, done=f"{deployment} {'enabled' if enabled else 'disabled'}")


def disable(deployment: DeploymentArg, comment: CommentOpt = "", expect: ExpectOpt = None) -> None:
    """Keep a deployment in the catalog but never plan or call it (every worker, without restart)."""
    _enabled(deployment, False, comment, expect)


def enable(deployment: DeploymentArg, comment: CommentOpt = "", expect: ExpectOpt = None) -> None:
    """Route to a disabled deployment again."""
    _enabled(deployment, True, comment, expect)


def remove(deployment: DeploymentArg, comment: CommentOpt = "", expect: ExpectOpt = None) -> None:
    """Remove a deployment from the live catalog (its history stays)."""
    from router_core import catalog_edit  # noqa: PLC0415 - genai-prices: on use

    def edit(doc: Document) -> Any:
        return catalog_edit.remove(doc, deployment)

    _change(edit, comment=comment, expect=expect, done=f"removed {deployment}")


def import_file(
    path: Annotated[Path, typer.Argument(help="A catalog TOML file: it replaces the live catalog.")],
    comment: CommentOpt = "",
    expect: ExpectOpt = None,
) -> None:
    """Replace the live catalog with a catalog file, as a new version (validated first)."""
    from router_core import catalog_edit  # noqa: PLC0415 - genai-prices: on use
    from router_core.catalog import read_catalog_document  # noqa: PLC0415 - on use

    try:
        document, where = read_catalog_document(path)
        catalog_edit.validate(document, source=where)
    except ConfigError as exc:
        raise fail(str(exc)) from None

    def edit(_doc: Document) -> Any:
        return document, catalog_edit.validate(document, source=where)

    _change(edit, comment=comment or f"imported {path}", expect=expect, done=f"imported {path}")


def _read(settings: Settings, version: int | None) -> CatalogVersion:
    async def go(store: Store) -> CatalogVersion | None:
        if version is not None:
            return await store.catalog.get(version)
        if not await store.catalog.newest_number():
            from storage.fleet.catalog import seed_catalog  # noqa: PLC0415 - on use

            async with optional_redis(settings) as redis:
                await seed_catalog(store, redis, settings.catalog_path)
        return await store.catalog.newest()

    stored = execute(with_store(settings, go))
    if stored is None:
        raise fail(f"no catalog version {version}", code=1)
    return stored


def export(
    path: Annotated[Path | None, typer.Argument(help="Write here (default: stdout).")] = None,
    version: Annotated[
        int | None, typer.Option("--version", help="An older version (default: the newest).")
    ] = None,
) -> None:
    """Write the live catalog as a catalog TOML file (as ROUTEQ_CATALOG_PATH and `routeq catalog` read)."""
    from router_core.catalog_edit import to_toml  # noqa: PLC0415 - on use

    stored = _read(load_settings(), version)
    when = f"{stored.created_at:%Y-%m-%d %H:%M} UTC"
    header = f"routeq live catalog, version {stored.version} ({when}, {stored.author})"
    text = to_toml(stored.document, header=header)
    if path is None:
        print(text, end="")
        return
    path.write_text(text, "utf-8")
    console.print(f"catalog version {stored.version} written to {path}", highlight=False, markup=False)


def history(
    limit: Annotated[int, typer.Option(help="How many versions, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The live catalog's versions: who changed it, when and why."""
    settings = load_settings()

    async def go(store: Store) -> list[CatalogVersion]:
        return await store.catalog.history(limit=limit)

    versions = execute(with_store(settings, go))
    rows = [
        {
            "version": v.version,
            "created_at": v.created_at,
            "author": v.author,
            "deployments": len(v.document.get("deployments", [])),
            "seeded": v.seed_hash is not None,
            "comment": v.comment,
        }
        for v in versions
    ]
    if as_json:
        print_json({"versions": rows})
        return
    table = Table(title="live catalog versions")
    for column in ("version", "created (UTC)", "author", "deployments", "comment"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["version"]),
            f"{row['created_at']:%Y-%m-%d %H:%M:%S}",
            str(row["author"]),
            str(row["deployments"]),
            str(row["comment"]),
        )
    console.print(table)
