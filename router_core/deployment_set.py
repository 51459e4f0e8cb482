"""A catalog and the adapters that call its deployments, held and swapped together by the router.

The live catalog (`storage.fleet.catalog`) hands the router a new catalog while requests run
(`Router.use_catalog`). `swapped` makes the set for it: deployments the new catalog adds or changes
get new adapters (and their sim profile in the process's simulated world), unchanged ones keep
theirs, and the adapters no longer in use are returned for closing once nothing can call them:
`RetiredAdapters` keeps them open for as long as a walk begun before the swap may still call one,
and closes them at a later swap (so they pile up no further than one such span's worth of changes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from router_core.catalog import Catalog
from router_core.providers.base import Provider
from router_core.providers.factory import build_providers, sim_profile
from router_core.settings import RouterSettings
from router_core.sim import SimWorld

__all__ = ["DeploymentSet", "ProviderFactory", "RetiredAdapters", "provider_factory", "swapped"]

# Builds adapters for the deployments of a (partial) catalog.
ProviderFactory = Callable[[Catalog], dict[str, Provider]]


@dataclass(frozen=True, slots=True)
class DeploymentSet:
    """A catalog and one adapter per deployment; a request's walk keeps the set it began with."""

    catalog: Catalog
    providers: dict[str, Provider]


def provider_factory(settings: RouterSettings, world: SimWorld | None) -> ProviderFactory:
    """Adapters built as `Router.from_settings` built the first ones (simulation mode, sim world)."""

    def build(part: Catalog) -> dict[str, Provider]:
        made, _ = build_providers(part, simulate=settings.simulate, sim_world=world, sim_url=settings.sim_url)
        return made

    return build


def swapped(
    current: DeploymentSet, catalog: Catalog, factory: ProviderFactory | None, world: SimWorld | None
) -> tuple[DeploymentSet, list[Provider]]:
    """The set for `catalog`, and the adapters of `current` it no longer uses (to close later).

    Raises:
        ValueError: `catalog` adds or changes deployments and there is no `factory`.
    """
    changed = [d for d in catalog.values() if current.catalog.get(d.id) != d or d.id not in current.providers]
    fresh: dict[str, Provider] = {}
    if changed:
        if factory is None:
            raise ValueError(f"no provider factory to build adapters for {[d.id for d in changed]}")
        if world is not None:
            for dep in changed:
                world.set_profile(dep.id, sim_profile(dep))
        fresh = factory(Catalog(changed, {d.id: catalog.price(d.id) for d in changed}, source=catalog.source))
    retired = [p for d, p in current.providers.items() if d not in catalog or d in fresh]
    providers = {d: fresh.get(d) or current.providers[d] for d in catalog}
    return DeploymentSet(catalog, providers), retired


@dataclass
class RetiredAdapters:
    """Adapters a swap replaced, each kept open `keep_s` after it (a walk begun before the swap may
    still call it), then closed at the next `retire` (or by `aclose`)."""

    keep_s: float
    _held: list[tuple[float, Provider]] = field(default_factory=list)
    _closing: set[asyncio.Task[Any]] = field(default_factory=set)

    def retire(self, providers: Sequence[Provider], now: float) -> None:
        """Hold `providers` from `now`; start closing those held `keep_s` already (in the running loop)."""
        self._held += [(now, provider) for provider in providers]
        due = [provider for at, provider in self._held if now - at >= self.keep_s]
        if due:
            self._held = [(at, provider) for at, provider in self._held if now - at < self.keep_s]
            task = asyncio.get_running_loop().create_task(_close_all(due))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def __len__(self) -> int:
        return len(self._held)

    async def aclose(self) -> None:
        """Close every adapter held, and wait for the closing already started."""
        await asyncio.gather(*self._closing)
        await _close_all([provider for _, provider in self._held])
        self._held.clear()


async def _close_all(providers: Sequence[Provider]) -> None:
    await asyncio.gather(*(provider.aclose() for provider in providers))
