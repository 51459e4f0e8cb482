"""Packages that load their names lazily (PEP 562) still offer every name they list in `__all__`."""

from __future__ import annotations

import importlib

import pytest

LAZY_PACKAGES = ["router_core", "router_core.sim", "router_core.providers"]


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
