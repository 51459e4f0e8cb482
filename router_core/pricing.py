"""Prices per deployment, from the `genai-prices` package unless the catalog overrides them.

The model is looked up once, when the catalog loads; a model with no known price and no override is
a `ConfigError` there, never a silent $0. Two uses:

- `Price.estimate(...)` — planning and budget estimates, on the hot path: flat per-token rates taken
  from genai-prices at load time.
- `Price.cost(usage)` — what the provider billed, from the usage it reported: genai-prices' own
  calculation (tiers, cache reads) for the resolved model, or the override's flat rates. The common
  case — only input and output tokens, at a flat (untiered) rate — is computed here with the same
  Decimal arithmetic genai-prices uses (its price for the call's date, rate * count / 1M per unit,
  summed), about 20 times faster; tests hold it equal to genai-prices' own result.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import Usage as PriceUsage
from genai_prices import data_snapshot
from genai_prices.types import ModelInfo
from genai_prices.types import Provider as PriceProvider
from pydantic import BaseModel, ConfigDict, Field

from router_core.models import Usage

__all__ = ["Price", "PriceOverride", "resolve_price"]

_PER_MTOK = 1_000_000
# genai-prices' flat rate is read at this many tokens: small enough to sit in the lowest tier of
# tiered models (long-context surcharges start at 128k-200k tokens).
_RATE_PROBE_TOKENS = 1_000


class PriceOverride(BaseModel):
    """Explicit prices in USD per million tokens, for models genai-prices does not know."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


@dataclass(frozen=True, slots=True)
class Price:
    """A deployment's resolved price."""

    input_per_token: float
    output_per_token: float
    source: str
    _model: ModelInfo | None = None
    _provider: PriceProvider | None = None

    def estimate(self, input_tokens: int, output_tokens: int) -> float:
        """Estimated USD for a call of this size, at the flat (lowest-tier) rates."""
        return input_tokens * self.input_per_token + output_tokens * self.output_per_token

    def cost(self, usage: Usage) -> float:
        """USD the provider bills for `usage`, as genai-prices computes it (or the override's rates)."""
        if self._model is None or self._provider is None:
            return self.estimate(usage.input_tokens, usage.output_tokens)
        now = datetime.now(tz=UTC)
        flat = _flat_cost(self._model, usage, now)
        if flat is not None:
            return flat
        calc = self._model.calc_price(_price_usage(usage), self._provider, genai_request_timestamp=now)
        return float(calc.total_price)


# Price keys that cost nothing for a call of plain input and output tokens beyond the input and
# output rates themselves (genai-prices counts unreported parts as zero).
_FLAT_KEYS = frozenset(
    {
        "input_mtok",
        "output_mtok",
        "cache_read_mtok",
        "cache_write_mtok",
        "cache_write_1h_mtok",
        "cache_audio_read_mtok",
        "cache_image_read_mtok",
        "input_audio_mtok",
        "input_image_mtok",
        "input_video_mtok",
        "output_audio_mtok",
        "output_image_mtok",
        "output_video_mtok",
        "output_reasoning_mtok",
        "output_citation_mtok",
        "web_searches_kcount",
        "storage_searches_kcount",
    }
)


def _flat_cost(model: ModelInfo, usage: Usage, when: datetime) -> float | None:
    """genai-prices' total for a call of plain input and output tokens at flat rates, else None.

    Anything else (cache reads or writes, image or reasoning tokens priced apart, tiered rates)
    goes through genai-prices itself.
    """
    if usage.cache_read_tokens or usage.cache_write_tokens or usage.image_tokens or usage.reasoning_tokens:
        return None
    prices = model.get_prices(when)
    if not _FLAT_KEYS.issuperset(k for k, v in vars(prices).items() if v is not None):
        return None  # a per-request fee, a price by characters...: genai-prices decides
    input_rate, output_rate = prices.input_mtok, prices.output_mtok
    if not isinstance(input_rate, Decimal) or not isinstance(output_rate, Decimal):
        return None  # tiered (or missing): genai-prices decides
    total = input_rate * usage.input_tokens / _PER_MTOK + output_rate * usage.output_tokens / _PER_MTOK
    return float(total)


def _price_usage(usage: Usage) -> PriceUsage:
    fields: dict[str, int] = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cache_read_tokens:
        fields["cache_read_tokens"] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        fields["cache_write_tokens"] = usage.cache_write_tokens
    # Parts of input and output that some models price apart (genai-prices falls back to the
    # plain input / output rate for a model without such a price).
    if usage.image_tokens:
        fields["input_image_tokens"] = usage.image_tokens
    if usage.reasoning_tokens:
        fields["output_reasoning_tokens"] = usage.reasoning_tokens
    return PriceUsage(**fields)


def resolve_price(model: str, *, provider_id: str | None, override: PriceOverride | None) -> Price:
    """Resolve a deployment's price.

    Raises:
        LookupError: genai-prices knows no such model (for that provider) and there is no override.
    """
    if override is not None:
        return Price(
            input_per_token=override.input_per_mtok / _PER_MTOK,
            output_per_token=override.output_per_mtok / _PER_MTOK,
            source="override",
        )
    provider, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    probe = info.calc_price(
        PriceUsage(input_tokens=_RATE_PROBE_TOKENS, output_tokens=_RATE_PROBE_TOKENS), provider
    )
    per_token = Decimal(_RATE_PROBE_TOKENS)
    return Price(
        input_per_token=float(probe.input_price / per_token),
        output_per_token=float(probe.output_price / per_token),
        source=f"genai-prices:{provider.id}/{info.id}",
        _model=info,
        _provider=provider,
    )
