"""Build one provider adapter per deployment, real or simulated.

Every adapter gets its own `httpx2.AsyncClient` (the SDKs' HTTP library) with SDK retries off; over
the network it is the openai SDK's `DefaultAioHttpClient` (aiohttp as httpx2's transport, which the
SDK offers "for improved concurrency performance"): httpcore's own pool walks every connection it
holds, checking its socket, on each request and each closed response, so with hundreds of calls in
flight to one deployment a call's cost grew with the calls in flight (half the SDK call's CPU at
200 over loopback). Both SDKs take it: it is an `httpx2.AsyncClient`.
A deployment is simulated when its kind is `sim`, when `simulate=always`, or, with `simulate=auto`,
when its API key variable is unset; simulated deployments talk to the in-process `SimWorld`
through `SimTransport`, or to a `routeq sim` server when `sim_url` is set.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from typing import Any

import httpx2
import openai

from router_core.catalog import Catalog, Deployment, ProviderKind
from router_core.providers.base import Provider
from router_core.providers.http import AsyncClient, ParsedUrls
from router_core.providers.openai import OpenAIProvider
from router_core.settings import SimulateMode
from router_core.sim import SimProfile, SimWorld, sim_http_client
from router_core.sim.transport import SIM_BASE_URL
from router_core.simulated import is_simulated

__all__ = ["build_providers", "is_simulated", "sim_profile", "sim_world_for"]

# Sent as the key to the sim and to keyless local servers (Ollama, vLLM) that ignore it.
_PLACEHOLDER_KEY = "routeq-no-key"
_LIMITS = httpx2.Limits(max_connections=1000)


def sim_profile(dep: Deployment) -> SimProfile:
    """The deployment's sim profile; its context window follows the catalog unless set explicitly,
    and so does the quality a simulated judge sees in its answers (`judged_quality`)."""
    update: dict[str, object] = {}
    if "context_window" not in dep.sim.model_fields_set:
        update["context_window"] = dep.context_window
    if dep.sim.judged_quality is None:
        update["judged_quality"] = dep.quality
    return dep.sim.model_copy(update=update) if update else dep.sim


def sim_world_for(catalog: Catalog) -> SimWorld:
    """A simulated world serving every deployment of `catalog` with its profile."""
    return SimWorld({d.id: sim_profile(d) for d in catalog.values()})


class AioHttpClient(AsyncClient, openai.DefaultAioHttpClient):
    """The openai SDK's aiohttp-backed client, parsing each request URL once (providers/http.py)."""


class OpenAIClient(openai.AsyncOpenAI):
    """`openai.AsyncOpenAI` keeping its parse of each request URL and its default headers
    (providers/http.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepared = ParsedUrls()
        self._kept_headers: dict[str, str | openai.Omit] | None = None

    def _prepare_url(self, url: str) -> httpx2.URL:
        return self._prepared.parse(self.base_url, url, super()._prepare_url)

    @property
    def user_agent(self) -> str:
        """The SDK's own (it names the client's class, which would be this subclass's name)."""
        return f"{openai.AsyncOpenAI.__name__}/Python {self._version}"

    @property
    def default_headers(self) -> dict[str, str | openai.Omit]:
        """The SDK's default headers, built on every call from settings fixed for the client's life
        (its platform, asked once at its first request, the async library, organization, project);
        built once here after that first request. A copy: the caller may change it."""
        kept = self._kept_headers
        if kept is None:
            kept = super().default_headers
            if self._platform is not None:
                self._kept_headers = kept
        return dict(kept)


def _http_client(*, sim_world: SimWorld | None) -> httpx2.AsyncClient:
    if sim_world is not None:
        return sim_http_client(sim_world)
    return AioHttpClient(limits=_LIMITS, follow_redirects=True, verify=_tls())


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every provider client of the process: each would load the CA bundle
    again (about 0.1 s, several on a busy machine), at every start of a worker or API process."""
    return httpx2.create_ssl_context()


def _build(
    dep: Deployment,
    *,
    simulated: bool,
    sim_world: SimWorld | None,
    sim_url: str | None,
    env: Mapping[str, str],
) -> Provider:
    if simulated:
        root = (sim_url or SIM_BASE_URL).rstrip("/") + f"/{dep.id}"
        key = _PLACEHOLDER_KEY
        http = _http_client(sim_world=sim_world)
    else:
        root = dep.base_url.rstrip("/") if dep.base_url else ""
        key = (env.get(dep.api_key_env) if dep.api_key_env else None) or _PLACEHOLDER_KEY
        http = _http_client(sim_world=None)
    if dep.kind is ProviderKind.ANTHROPIC:
        # Imported here: the anthropic SDK takes about a second to import, which a worker whose
        # catalog has no Anthropic deployment need not pay at every start.
        import anthropic  # noqa: PLC0415

        from router_core.providers.anthropic import AnthropicProvider  # noqa: PLC0415

        client_a = anthropic.AsyncAnthropic(
            api_key=key, base_url=root or None, http_client=http, max_retries=0
        )
        return AnthropicProvider(dep, client_a)
    base = (root + "/v1" if simulated else root) or None
    client_o = OpenAIClient(api_key=key, base_url=base, http_client=http, max_retries=0)
    return OpenAIProvider(dep, client_o)


def build_providers(
    catalog: Catalog,
    *,
    simulate: SimulateMode = SimulateMode.AUTO,
    sim_world: SimWorld | None = None,
    sim_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[dict[str, Provider], SimWorld | None]:
    """Adapters by deployment id, and the in-process sim world the simulated ones use.

    The world is built from the catalog's `sim` profiles unless one is passed in. With `sim_url`
    the simulated deployments talk to that server instead and no in-process world is returned, so
    nobody tunes a world that serves no one.
    """
    env = os.environ if env is None else env
    world = None if sim_url else sim_world or sim_world_for(catalog)
    providers = {
        dep.id: _build(
            dep, simulated=is_simulated(dep, simulate, env), sim_world=world, sim_url=sim_url, env=env
        )
        for dep in catalog.values()
    }
    return providers, world
