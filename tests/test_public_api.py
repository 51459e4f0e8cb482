"""Packages that load their names lazily (PEP 562) still offer every name they list in `__all__`."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import routeq

LAZY_PACKAGES = ["routeq", "router_core", "router_core.sim", "router_core.providers"]


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_name_in_all_resolves_and_is_listed_by_dir(package: str) -> None:
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__)), "a name is listed twice"
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_an_unknown_name_is_an_attribute_error(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name


def test_routeq_offers_the_client_the_router_and_the_job_vocabulary() -> None:
    expected = {
        "Client",
        "Router",
        "ChatRequest",
        "Preferences",
        "Message",
        "NewJob",
        "JobStatus",
        "JobRecord",
        "BatchRecord",
        "Settings",
        "Catalog",
        "load_catalog",
        "CompletionResult",
        "RouteqError",
        "NoRouteError",
        "AllAttemptsFailedError",
        "NotFoundError",
        "ServiceUnavailableError",
    }
    assert expected <= set(routeq.__all__)
    assert issubclass(routeq.NotFoundError, routeq.RouteqError)
    assert routeq.Client.__module__ == "producer.client"


def test_import_routeq_loads_none_of_its_names() -> None:
    """`import routeq` is free: pydantic, SQLAlchemy, Redis and the SDKs wait for the first name used."""
    code = (
        "import json, sys, routeq; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in json.loads(sys.argv[1]))))"
    )
    heavy = ["router_core", "storage", "producer", "workers", "pydantic", "sqlalchemy", "redis", "openai"]
    child = subprocess.run(
        [sys.executable, "-c", code, json.dumps(heavy)], capture_output=True, text=True, check=True
    )
    # Only the lazy package itself and its one helper are loaded: none of the names' modules.
    assert json.loads(child.stdout) == ["router_core", "router_core._lazy"]
