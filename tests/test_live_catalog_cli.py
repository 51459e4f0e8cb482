"""`routeq deployments add|set|disable|enable|remove|import|export|history` (`routeq catalog
export|import|history` too), embedded (SQLite file, no Redis) and on the real Redis + PostgreSQL:
every change a version, bad input one line naming the field, and an export that `routeq catalog`
validates and that imports back as the same catalog.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from producer.cli import app, live_catalog
from router_core.catalog import load_catalog
from storage.settings import Settings
from storage.sql.store import Store
from tests import test_cli_pipeline

runner = CliRunner()
workdir = test_cli_pipeline.workdir
services_env = test_cli_pipeline.services_env

ADD = [
    "deployments",
    "add",
    "new-d",
    "kind=sim",
    "model=new-d-model",
    "quality=0.9",
    "latency_ms=100",
    "context_window=8000",
    "price={input_per_mtok = 1, output_per_mtok = 2}",
    "-m",
    "trial",
]


@pytest.fixture(params=["embedded", "services"])
def cli(request: pytest.FixtureRequest, workdir: Path) -> Path:
    if request.param == "services":
        request.getfixturevalue("services_env")
    return workdir


def ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def refused(*args: str, code: int = 2) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


async def _live() -> list[str]:
    store = await Store.open(Settings().database_url)
    try:
        newest = await store.catalog.newest()
    finally:
        await store.close()
    assert newest is not None
    entries = newest.document["deployments"]
    return [str(d["id"]) + ("" if d.get("enabled", True) else " (disabled)") for d in entries]


def test_changes_are_versions_and_export_imports_back(cli: Path) -> None:
    assert "catalog version 2: added new-d" in ok(*ADD)  # the file seeded version 1 first
    if os.environ.get("ROUTEQ_REDIS_URL"):  # fleet state needs the fleet's Redis (services only)
        listed = json.loads(ok("deployments", "list", "--json"))["deployments"]
        assert [d["id"] for d in listed] == ["sim-a", "sim-b", "new-d"]
        assert "new-d is down" in ok("deployments", "down", "new-d")
    changed = ok("deployments", "set", "new-d", "rpm=50", "tpm=9000")
    assert "catalog version 3: changed new-d (rpm, tpm)" in changed
    assert "version 4: sim-a disabled" in ok("deployments", "disable", "sim-a")
    assert asyncio.run(_live()) == ["sim-a (disabled)", "sim-b", "new-d"]
    assert "version 5: sim-a enabled" in ok("deployments", "enable", "sim-a")
    assert "version 6: removed sim-b" in ok("deployments", "remove", "sim-b")
    assert asyncio.run(_live()) == ["sim-a", "new-d"]

    ok("catalog", "export", "live.toml")  # as `routeq deployments export`
    assert ok("deployments", "export") == (cli / "live.toml").read_text()
    exported = load_catalog(cli / "live.toml")
    assert exported["new-d"].rpm == 50
    assert exported["new-d"].price is not None
    ok("catalog", "live.toml")  # the file routeq reads validates (a first word naming no command: a file)
    assert "new-d" in ok("catalog", "live.toml", "--json")
    assert "version 7: imported" in ok("deployments", "import", str(cli / "catalog.toml"))
    assert asyncio.run(_live()) == ["sim-a", "sim-b"]
    ok("deployments", "import", "live.toml", "-m", "back")
    ok("deployments", "export", "again.toml")
    assert load_catalog(cli / "again.toml").deployments() == exported.deployments()

    assert ok("catalog", "history", "--json") == ok("deployments", "history", "--json")
    history = json.loads(ok("deployments", "history", "--json"))["versions"]
    assert [v["version"] for v in history] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert history[-1]["author"] == "seed"
    assert history[-2]["author"].startswith("cli")
    assert (history[-2]["comment"], history[0]["comment"]) == ("trial", "back")
    old = ok("deployments", "export", "--version", "1")
    assert "new-d" not in old
    assert 'id = "sim-b"' in old


@pytest.mark.usefixtures("workdir")  # embedded only: the refusals come before any backend matters
def test_bad_changes_are_one_line_naming_what_is_wrong() -> None:
    assert "field 'quality'" in refused("deployments", "set", "sim-a", "quality=7")
    assert "deployment 'sim-a'" in refused("deployments", "set", "sim-a", "quality=7")
    assert "unknown deployment" in refused("deployments", "set", "nope", "rpm=1")
    assert "is not name=value" in refused("deployments", "set", "sim-a", "rpm")
    assert "field 'id'" in refused("deployments", "add", "sim-a", "kind=sim")
    assert "field 'model'" in refused("deployments", "add", "x", "kind=sim", "quality=0.5")
    ok("deployments", "set", "sim-a", "rpm=5")
    assert "made against version 1, the newest is 2" in refused(
        "deployments", "set", "sim-a", "rpm=6", "--expect", "1", code=1
    )
    assert asyncio.run(_live()) == ["sim-a", "sim-b"]


def test_name_value_pairs_read_as_toml_or_plain_strings() -> None:
    fields = live_catalog.parse_fields(
        [
            "quality=0.8",
            "enabled=false",
            'capabilities=["code"]',
            "model=gpt-4o",
            "sim={latency_ms=5}",
            "rpm=",
        ]
    )
    assert fields == {
        "quality": 0.8,
        "enabled": False,
        "capabilities": ["code"],
        "model": "gpt-4o",
        "sim": {"latency_ms": 5},
        "rpm": None,
    }
