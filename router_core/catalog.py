"""The deployment catalog: which models routeq may call, where, at what price and quality.

A catalog is a TOML file with one `[[deployments]]` table per deployment (see README, "Catalog").
Loading validates every field, resolves each price through genai-prices, and checks cross references
(fallbacks); every problem is a `ConfigError` naming the file, the deployment and the field.
A deployment serves chat (the default) or embeddings (`task = "embedding"`); the two never mix:
chat requests are planned over chat deployments only, and `Catalog.embedder` picks an embedding one.
With no file, the built-in demo catalog (`demo_catalog.toml`, served by the simulator) is used.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router_core.chat import ALL_FEATURES, Feature
from router_core.errors import ConfigError
from router_core.models import Capability
from router_core.pricing import Price, PriceOverride, resolve_price
from router_core.sim.profiles import SimProfile

__all__ = [
    "DEMO_CATALOG",
    "Catalog",
    "Deployment",
    "ProviderKind",
    "Task",
    "default_features",
    "load_catalog",
    "parse_catalog",
    "read_catalog_document",
]

DEMO_CATALOG = "demo_catalog.toml"
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"


class ProviderKind(StrEnum):
    """Which adapter (wire protocol) talks to the deployment."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai_compatible"
    SIM = "sim"


class Task(StrEnum):
    """What a deployment is called for: chat completions, or embeddings (`embeddings.create`)."""

    CHAT = "chat"
    EMBEDDING = "embedding"


# Kinds whose wire has an embeddings endpoint (Anthropic's API has none).
_EMBEDDING_KINDS = frozenset({ProviderKind.OPENAI, ProviderKind.OPENAI_COMPATIBLE, ProviderKind.SIM})

# genai-prices provider id used when the catalog gives none.
_DEFAULT_PRICE_PROVIDER = {ProviderKind.OPENAI: "openai", ProviderKind.ANTHROPIC: "anthropic"}

F = Feature
_SAMPLING = frozenset({F.TEMPERATURE, F.TOP_P, F.PENALTIES, F.LOGIT_BIAS, F.LOGPROBS})
# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5...) take reasoning_effort and refuse sampling.
_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)")
# The Messages API (anthropic SDK 2.x) has tools, images, stop sequences, structured output
# (`output_config.format`) and effort, and no sampling parameters, logprobs, seed, n or OpenAI tiers.
_ANTHROPIC = frozenset(
    {F.TOOLS, F.PARALLEL_TOOL_CALLS, F.VISION, F.JSON_OBJECT, F.JSON_SCHEMA, F.STOP, F.REASONING}
)
# An unknown OpenAI-compatible server: plain text with the common sampling knobs. Declare more.
_COMPATIBLE = frozenset({F.STOP, F.TEMPERATURE, F.TOP_P})


def default_features(kind: ProviderKind, model: str) -> frozenset[Feature]:
    """What a deployment honours when its catalog entry lists no `features`."""
    if kind is ProviderKind.SIM:
        return ALL_FEATURES
    if kind is ProviderKind.ANTHROPIC:
        return _ANTHROPIC
    if kind is ProviderKind.OPENAI_COMPATIBLE:
        return _COMPATIBLE
    if _OPENAI_REASONING.match(model):
        return ALL_FEATURES - _SAMPLING
    return ALL_FEATURES - {F.REASONING}


class Deployment(BaseModel):
    """One callable model endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID_PATTERN, max_length=100)
    kind: ProviderKind
    task: Task = Task.CHAT
    dimensions: int | None = Field(
        default=None, gt=0, description="Embedding length to ask for (task 'embedding' only)."
    )
    provider: str = Field(default="", description="Vendor label for include/exclude_providers.")
    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key_env: str | None = None
    quality: float = Field(ge=0, le=1)
    latency_ms: float = Field(gt=0, description="Prior latency estimate before live stats exist.")
    capabilities: frozenset[Capability] = frozenset()
    features: frozenset[Feature] = Field(
        default=None,  # type: ignore[arg-type]  # filled in by _check from the kind and model
        description="Request features it honours (tools, vision, json_schema...); default by kind.",
    )
    context_window: int = Field(gt=0)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0, description="Calls in flight, fleet-wide.")
    rate_window_s: float = Field(
        default=60.0, gt=0, description="The window rpm and tpm count over; shorten it only to test."
    )
    fallbacks: tuple[str, ...] = ()
    price_provider: str | None = Field(default=None, description="genai-prices provider id.")
    price: PriceOverride | None = None
    sim: SimProfile = Field(default_factory=SimProfile)
    enabled: bool = Field(
        default=True,
        description="False: kept in the catalog, never planned or called (`routeq catalog disable`).",
    )

    @model_validator(mode="after")
    def _check(self) -> Deployment:
        if self.kind is ProviderKind.OPENAI_COMPATIBLE and not self.base_url:
            raise ValueError("kind 'openai_compatible' needs 'base_url'")
        if not self.provider:
            object.__setattr__(self, "provider", self.price_provider or self.kind.value)
        if self.features is None:
            # Features are request fields of chat; an embedding deployment honours none of them.
            chat = self.task is Task.CHAT
            features = default_features(self.kind, self.model) if chat else frozenset()
            object.__setattr__(self, "features", features)
        return self


def _resolve(dep: Deployment, path: str) -> Price:
    """Look the price up in genai-prices (or take the override); a miss is a ConfigError."""
    provider_id = dep.price_provider or _DEFAULT_PRICE_PROVIDER.get(dep.kind)
    try:
        return resolve_price(dep.model, provider_id=provider_id, override=dep.price)
    except LookupError as exc:
        raise ConfigError(
            f"no price known for model {dep.model!r}"
            f"{f' at provider {provider_id!r}' if provider_id else ''} ({exc}); "
            "set 'price_provider' to a genai-prices provider id, or give "
            "[deployments.price] input_per_mtok / output_per_mtok",
            path=path,
            deployment=dep.id,
            field="model",
        ) from exc


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployments: list[Deployment] = Field(min_length=1)


class Catalog(Mapping[str, Deployment]):
    """Deployments by id, in file order."""

    def __init__(self, deployments: list[Deployment], prices: Mapping[str, Price], *, source: str) -> None:
        self._by_id = {d.id: d for d in deployments}
        self._prices = dict(prices)
        self.source = source
        # Asked of every request a file submits (`planner.check_references`): worked out once.
        self._chat = tuple(d for d in deployments if d.task is Task.CHAT)
        self._chat_features = frozenset(f for d in self._chat for f in d.features)
        self._models = frozenset(d.model for d in deployments)

    def chat_deployments(self) -> tuple[Deployment, ...]:
        """The deployments that answer chat (task = "chat"), in file order."""
        return self._chat

    def chat_features(self) -> frozenset[Feature]:
        """Every feature some chat deployment honours."""
        return self._chat_features

    def price(self, deployment_id: str) -> Price:
        """The deployment's resolved price (genai-prices or the catalog's override)."""
        return self._prices[deployment_id]

    def __getitem__(self, key: str) -> Deployment:
        return self._by_id[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def deployments(self) -> list[Deployment]:
        return list(self._by_id.values())

    def embedder(self, deployment_id: str | None = None) -> Deployment:
        """The embedding deployment named `deployment_id`, or the catalog's first one.

        Raises:
            ConfigError: there is none, or `deployment_id` is unknown or not an embedding deployment.
        """
        if deployment_id is None:
            found = next((d for d in self._by_id.values() if d.task is Task.EMBEDDING and d.enabled), None)
            if found is None:
                raise ConfigError(
                    'no embedding deployment: add a [[deployments]] table with task = "embedding" '
                    '(e.g. kind = "openai", model = "text-embedding-3-small")',
                    path=self.source,
                    field="task",
                )
            return found
        dep = self._by_id.get(deployment_id)
        if dep is None:
            known = f"unknown deployment; known: {sorted(self._by_id)}"
            raise ConfigError(known, path=self.source, deployment=deployment_id)
        if dep.task is not Task.EMBEDDING:
            raise ConfigError(
                f'a {dep.task.value} deployment cannot embed; name one with task = "embedding"',
                path=self.source,
                deployment=deployment_id,
                field="task",
            )
        return dep

    def serves(self, model: str) -> bool:
        """Whether a request's `model` names something here: "auto", a deployment id or a model name."""
        return model == "auto" or model in self._by_id or model in self._models


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load and validate a catalog file; `None` loads the built-in demo catalog.

    Raises:
        ConfigError: unreadable file, bad TOML, an invalid field, a duplicate id, an unknown
            fallback, or a model with no price.
    """
    raw, where = read_catalog_document(path)
    return parse_catalog(raw, source=where)


def read_catalog_document(path: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """A catalog file's TOML as parsed but not yet validated, and where it came from (for errors).

    Raises:
        ConfigError: unreadable file or bad TOML.
    """
    if path is None:
        text = resources.files("router_core").joinpath(DEMO_CATALOG).read_text("utf-8")
        where = f"<built-in {DEMO_CATALOG}>"
    else:
        where = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read catalog: {exc.strerror}", path=where) from exc
    try:
        return tomllib.loads(text), where
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=where) from exc


def parse_catalog(raw: Mapping[str, Any], *, source: str) -> Catalog:
    """Validate an already-parsed catalog document (see `load_catalog`)."""
    try:
        parsed = _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, raw, source) from exc
    by_id: dict[str, Deployment] = {}
    for dep in parsed.deployments:
        if dep.id in by_id:
            raise ConfigError("duplicate deployment id", path=source, deployment=dep.id, field="id")
        by_id[dep.id] = dep
    for dep in parsed.deployments:
        _check_fallbacks(dep, by_id, source)
        _check_task(dep, source)
    prices = {dep.id: _resolve(dep, source) for dep in parsed.deployments}
    return Catalog(parsed.deployments, prices, source=source)


def _check_fallbacks(dep: Deployment, by_id: Mapping[str, Deployment], source: str) -> None:
    """Every fallback is a deployment of this catalog serving the same task."""
    for fallback in dep.fallbacks:
        other = by_id.get(fallback)
        if other is None:
            problem = f"fallback {fallback!r} is not a deployment id in this catalog"
        elif other.task is not dep.task:
            problem = f"fallback {fallback!r} serves {other.task.value}, this deployment {dep.task.value}"
        else:
            continue
        raise ConfigError(problem, path=source, deployment=dep.id, field="fallbacks")


def _check_task(dep: Deployment, source: str) -> None:
    """An embedding deployment needs a wire with an embeddings endpoint; `dimensions` is its alone."""
    if dep.task is Task.EMBEDDING and dep.kind not in _EMBEDDING_KINDS:
        kinds = ", ".join(sorted(k.value for k in _EMBEDDING_KINDS))
        raise ConfigError(
            f"kind {dep.kind.value!r} has no embeddings API; an embedding deployment needs kind {kinds}",
            path=source,
            deployment=dep.id,
            field="kind",
        )
    if dep.task is not Task.EMBEDDING and dep.dimensions is not None:
        raise ConfigError(
            'dimensions is only for embedding deployments: set task = "embedding" or remove it',
            path=source,
            deployment=dep.id,
            field="dimensions",
        )


def _config_error(exc: ValidationError, raw: Mapping[str, Any], source: str) -> ConfigError:
    """Turn pydantic's first error into a ConfigError naming deployment and field."""
    first = exc.errors()[0]
    loc = list(first["loc"])
    deployment: str | None = None
    if len(loc) >= 2 and loc[0] == "deployments" and isinstance(loc[1], int):
        entries = raw.get("deployments")
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        deployment = str(entry.get("id")) if isinstance(entry, dict) and entry.get("id") else f"#{loc[1] + 1}"
        loc = loc[2:]
    field = ".".join(str(part) for part in loc) or None
    count = exc.error_count()
    more = f" ({count - 1} more error{'s' if count > 2 else ''})" if count > 1 else ""
    return ConfigError(f"{first['msg']}{more}", path=source, deployment=deployment, field=field)
