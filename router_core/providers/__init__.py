"""Provider adapters on the official SDKs, and the one place SDK errors are translated.

Names are loaded on first use (PEP 562): the openai and anthropic SDKs cost about a second to
import, so only code that builds a provider pays for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router_core._lazy import lazy_exports

if TYPE_CHECKING:
    from router_core.providers.anthropic import AnthropicProvider
    from router_core.providers.base import SIMULATED_HEADER, EmbeddingReply, Provider, ProviderReply
    from router_core.providers.errors import map_provider_error, parse_retry_after
    from router_core.providers.factory import build_providers, is_simulated, sim_profile, sim_world_for
    from router_core.providers.openai import OpenAIProvider

__all__ = [
    "SIMULATED_HEADER",
    "AnthropicProvider",
    "EmbeddingReply",
    "OpenAIProvider",
    "Provider",
    "ProviderReply",
    "build_providers",
    "is_simulated",
    "map_provider_error",
    "parse_retry_after",
    "sim_profile",
    "sim_world_for",
]

# Which module defines each public name; `__getattr__` imports it on first access.
_MODULES: dict[str, tuple[str, ...]] = {
    "router_core.providers.anthropic": ("AnthropicProvider",),
    "router_core.providers.base": ("SIMULATED_HEADER", "EmbeddingReply", "Provider", "ProviderReply"),
    "router_core.providers.errors": ("map_provider_error", "parse_retry_after"),
    "router_core.providers.factory": ("build_providers", "is_simulated", "sim_profile", "sim_world_for"),
    "router_core.providers.openai": ("OpenAIProvider",),
}
__getattr__, __dir__ = lazy_exports(__name__, _MODULES, globals())
