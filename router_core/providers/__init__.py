"""Provider adapters on the official SDKs, and the one place SDK errors are translated."""

from router_core.providers.anthropic import AnthropicProvider
from router_core.providers.base import SIMULATED_HEADER, Provider, ProviderReply
from router_core.providers.errors import map_provider_error, parse_retry_after
from router_core.providers.factory import build_providers, is_simulated, sim_profile, sim_world_for
from router_core.providers.openai import OpenAIProvider

__all__ = [
    "SIMULATED_HEADER",
    "AnthropicProvider",
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
