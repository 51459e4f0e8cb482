"""Names of a package loaded on first use (PEP 562), written once for every lazy `__init__`.

A package lists which module defines each of its public names and installs the pair:

    __getattr__, __dir__ = lazy_exports(__name__, _MODULES, globals())

`package.Name` then imports its module on first access and keeps the value in the package's
namespace, so later lookups never come back here. The CLI's quick commands rely on this: importing
`router_core.models` must not pay for the provider SDKs that `router_core.Router` pulls in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, modules: Mapping[str, tuple[str, ...]], namespace: MutableMapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`, whose names `modules` maps to their modules."""
    source = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = source.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *source})

    return __getattr__, __dir__
