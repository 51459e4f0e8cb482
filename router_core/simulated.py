"""Which deployments the simulated provider world serves instead of their real API, and saying so.

A deployment is simulated when its kind is `sim`, when `ROUTEQ_SIMULATE=always`, or, with `auto`
(the default), when its API key variable is unset or empty; `never` calls every real API (a missing
key is then an authentication error at call time). Light on purpose (no provider SDK): `routeq
catalog`, `routeq run`'s header, the worker's start-up line and `/v1/providers` all say which
deployments are simulated, and none of them should pay for importing the SDKs to do it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from router_core.catalog import Catalog, Deployment, ProviderKind
from router_core.settings import SimulateMode

__all__ = ["is_simulated", "simulated_ids", "simulated_note"]


def is_simulated(dep: Deployment, mode: SimulateMode, env: Mapping[str, str]) -> bool:
    """Whether `dep` is served by the simulated world under `mode`, given the environment `env`."""
    if dep.kind is ProviderKind.SIM or mode is SimulateMode.ALWAYS:
        return True
    if mode is SimulateMode.NEVER or dep.api_key_env is None:
        return False
    return not env.get(dep.api_key_env)


def simulated_ids(
    catalog: Catalog, mode: SimulateMode, env: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The ids of the catalog's simulated deployments (`env` defaults to this process's environment)."""
    env = os.environ if env is None else env
    return frozenset(dep.id for dep in catalog.values() if is_simulated(dep, mode, env))


def simulated_note(catalog: Catalog, simulated: frozenset[str], mode: SimulateMode) -> str:
    """One phrase for headers and logs: `all simulated (ROUTEQ_SIMULATE=auto, no API keys set)`,
    `none simulated`, or `2 of 9 simulated: a, b`."""
    if not simulated:
        return f"none simulated (ROUTEQ_SIMULATE={mode.value})"
    if len(simulated) == len(catalog):
        why = ", no API keys set" if mode is SimulateMode.AUTO else ""
        return f"all simulated (ROUTEQ_SIMULATE={mode.value}{why})"
    names = ", ".join(dep for dep in catalog if dep in simulated)
    return f"{len(simulated)} of {len(catalog)} simulated: {names} (ROUTEQ_SIMULATE={mode.value})"
