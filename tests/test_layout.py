"""The house rules of the layout, checked by parsing every module's imports (nothing is imported).

router_core  imports none of storage, workers, producer
storage      imports neither workers nor producer
workers      never imports producer
producer     imports workers only where the CLI starts workers in-process (`routeq worker`,
             `routeq run`); the client and the HTTP API meet workers through Redis and SQL
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router_core", "storage", "workers", "producer", "routeq")
FORBIDDEN = {
    "router_core": {"storage", "workers", "producer", "routeq"},
    "storage": {"workers", "producer", "routeq"},
    "workers": {"producer", "routeq"},
    "producer": {"routeq"},
}
# The only producer modules that may start a worker in-process: `routeq worker`, and the embedded
# stack of `routeq run` (which `producer/cli/running.py` imports; `batches.py` imports that inside `run`).
STARTS_WORKERS = ("producer/cli/workers.py", "producer/cli/embedded.py")
MAX_LINES = 600
MAX_STORAGE_TOP_MODULES = 8


def _modules(*roots: str) -> Iterator[Path]:
    for root in roots:
        if (ROOT / root).is_dir():
            yield from sorted((ROOT / root).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    """The top-level names every `import` / `from ... import` in `path` reaches, wherever it sits."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.partition(".")[0])
    return found


def _imported_modules(path: Path) -> set[str]:
    """The full dotted names of what `path` imports with `from X import ...`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package: str) -> None:
    broken = {
        _name(path): sorted(_imported_packages(path) & FORBIDDEN[package]) for path in _modules(package)
    }
    assert {name: bad for name, bad in broken.items() if bad} == {}


def test_only_the_cli_starts_workers_in_process() -> None:
    importers = [_name(p) for p in _modules("producer") if "workers" in _imported_packages(p)]
    assert sorted(importers) == sorted(STARTS_WORKERS)
    embedded = {_name(p) for p in _modules("producer") if "producer.cli.embedded" in _imported_modules(p)}
    assert embedded == {"producer/cli/running.py", "producer/cli/evals.py"}
    running = {_name(p) for p in _modules("producer") if "producer.cli.running" in _imported_modules(p)}
    assert running == {"producer/cli/batches.py"}


def test_storage_top_level_stays_small() -> None:
    top = sorted(p.name for p in (ROOT / "storage").glob("*.py"))
    assert len(top) <= MAX_STORAGE_TOP_MODULES, top


def test_no_module_is_over_600_lines() -> None:
    sizes = {
        _name(p): len(p.read_text(encoding="utf-8").splitlines())
        for p in _modules(*PACKAGES, "tests", "bench")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The parser finds imports anywhere in a module, function bodies included."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from workers.worker import build_worker\n    import producer.cli\n")
    assert _imported_packages(module) == {"workers", "producer"}
