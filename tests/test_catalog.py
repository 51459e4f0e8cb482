"""Catalog loading: demo catalog, genai-prices lookup, and errors that name file, deployment, field."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import anthropic.types
import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price, data_snapshot, extract_usage

from router_core import ConfigError, ProviderKind, Task, Usage, load_catalog
from router_core.chat import Feature
from router_core.pricing import _flat_cost
from router_core.providers.anthropic import to_usage

GOOD = """
[[deployments]]
id = "mini"
kind = "openai"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"
quality = 0.7
latency_ms = 500
context_window = 128000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


def test_demo_catalog_loads_with_real_prices() -> None:
    catalog = load_catalog()
    assert len(catalog) >= 8
    kinds = {d.kind for d in catalog.values()}
    assert {ProviderKind.OPENAI, ProviderKind.ANTHROPIC, ProviderKind.OPENAI_COMPATIBLE} <= kinds
    providers = {d.provider for d in catalog.values()}
    assert {"openai", "anthropic", "google", "mistral", "meta"} <= providers
    for dep in catalog.values():
        assert catalog.price(dep.id).source.startswith("genai-prices:")
        assert catalog.price(dep.id).input_per_token > 0


def test_cost_from_usage_matches_genai_prices(tmp_path: Path) -> None:
    price = load_catalog(write(tmp_path, GOOD)).price("mini")
    usage = Usage(input_tokens=12_345, output_tokens=678)
    expected = calc_price(
        PriceUsage(input_tokens=12_345, output_tokens=678), "gpt-4o-mini", provider_id="openai"
    )
    assert price.cost(usage) == pytest.approx(float(expected.total_price), rel=1e-12)
    # gpt-4o-mini list price: $0.15 in / $0.60 out per million tokens.
    assert price.cost(usage) == pytest.approx(12_345 * 0.15e-6 + 678 * 0.60e-6)


def test_price_override_is_used(tmp_path: Path) -> None:
    text = GOOD.replace('model = "gpt-4o-mini"', 'model = "my-finetune"') + (
        "[deployments.price]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n"
    )
    price = load_catalog(write(tmp_path, text)).price("mini")
    assert price.source == "override"
    assert price.cost(Usage(input_tokens=1_000_000, output_tokens=500_000)) == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("edit", "deployment", "field", "words"),
    [
        (("quality = 0.7", "quality = 1.7"), "mini", "quality", "less than or equal to 1"),
        (('kind = "openai"', 'kind = "openia"'), "mini", "kind", "openai"),
        (("latency_ms = 500", 'latency_ms = "slow"'), "mini", "latency_ms", "number"),
        (
            ("context_window = 128000", "context_window = 128000\ncolour = 1"),
            "mini",
            "colour",
            "Extra inputs",
        ),
        (('model = "gpt-4o-mini"', 'model = "gpt-unknown-9000"'), "mini", "model", "no price known"),
        (('kind = "openai"', 'kind = "openai_compatible"'), "mini", None, "base_url"),
        (
            ("context_window = 128000", 'context_window = 128000\nfallbacks = ["ghost"]'),
            "mini",
            "fallbacks",
            "ghost",
        ),
    ],
)
def test_bad_catalog_names_file_deployment_and_field(
    tmp_path: Path, edit: tuple[str, str], deployment: str, field: str | None, words: str
) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    err = info.value
    assert err.path == str(path)
    assert err.deployment == deployment
    assert err.field == field
    message = str(err)
    assert str(path) in message
    assert repr(deployment) in message
    assert words in message
    if field:
        assert repr(field) in message


EMBED = """
[[deployments]]
id = "embed"
kind = "openai"
task = "embedding"
model = "text-embedding-3-small"
dimensions = 256
quality = 0.7
latency_ms = 100
context_window = 8191
"""


@pytest.mark.parametrize(
    ("text", "deployment", "field", "words"),
    [
        (EMBED.replace('kind = "openai"', 'kind = "anthropic"'), "embed", "kind", "no embeddings API"),
        (GOOD + "dimensions = 256\n", "mini", "dimensions", 'task = "embedding"'),
        (EMBED.replace("dimensions = 256", "dimensions = 0"), "embed", "dimensions", "greater than 0"),
        (EMBED.replace('task = "embedding"', 'task = "images"'), "embed", "task", "chat"),
        (GOOD + 'fallbacks = ["embed"]\n' + EMBED, "mini", "fallbacks", "serves embedding"),
    ],
)
def test_bad_embedding_deployment_names_file_deployment_and_field(
    tmp_path: Path, text: str, deployment: str, field: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    err = info.value
    assert (err.path, err.deployment, err.field) == (str(path), deployment, field)
    assert words in str(err)


def test_embedder_finds_the_embedding_deployment(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, GOOD + EMBED))
    embed = catalog.embedder()
    assert (embed.id, embed.task, embed.dimensions) == ("embed", Task.EMBEDDING, 256)
    assert catalog.embedder("embed") is embed
    assert embed.features == frozenset()  # chat request features mean nothing to it
    assert catalog["mini"].task is Task.CHAT
    # Billed for input tokens only, at genai-prices' rate.
    price = catalog.price("embed")
    assert price.source == "genai-prices:openai/text-embedding-3-small"
    assert price.output_per_token == 0
    expected = calc_price(PriceUsage(input_tokens=12_345), "text-embedding-3-small", provider_id="openai")
    assert price.cost(Usage(input_tokens=12_345)) == pytest.approx(float(expected.total_price), rel=1e-12)
    with pytest.raises(ConfigError, match=r"deployment 'mini', field 'task': a chat deployment cannot embed"):
        catalog.embedder("mini")
    with pytest.raises(
        ConfigError, match=r"field 'task': no embedding deployment: add a \[\[deployments\]\]"
    ):
        load_catalog(write(tmp_path, GOOD)).embedder()


def test_demo_catalog_has_one_embedding_deployment() -> None:
    catalog = load_catalog()
    embedders = [d for d in catalog.values() if d.task is Task.EMBEDDING]
    assert [(d.id, d.model, d.dimensions) for d in embedders] == [
        ("openai-embed", "text-embedding-3-small", 256)
    ]
    assert catalog.embedder().id == "openai-embed"


def test_unnamed_deployment_is_named_by_position(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + GOOD.replace('id = "mini"', ""))
    with pytest.raises(ConfigError, match=r"deployment '#2', field 'id': Field required"):
        load_catalog(path)
    path = write(tmp_path, GOOD.replace('id = "mini"', 'id = "bad id!"'))
    with pytest.raises(ConfigError, match=r"deployment 'bad id!', field 'id': String should match"):
        load_catalog(path)


def test_duplicate_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"deployment 'mini', field 'id': duplicate"):
        load_catalog(write(tmp_path, GOOD + GOOD))


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "\nquality = = 3\n")
    with pytest.raises(ConfigError, match=r"catalog.toml: not valid TOML.*line 11"):
        load_catalog(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read catalog"):
        load_catalog(tmp_path / "absent.toml")


def test_empty_catalog(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="deployments"):
        load_catalog(write(tmp_path, "# nothing\n"))


def test_cached_prompt_tokens_are_priced_like_genai_prices_extracts_them(tmp_path: Path) -> None:
    body = {
        "model": "claude-haiku-4-5",
        "usage": {
            "input_tokens": 1_000,
            "cache_read_input_tokens": 3_000,
            "cache_creation_input_tokens": 2_000,
            "output_tokens": 500,
        },
    }
    text = GOOD.replace('kind = "openai"', 'kind = "anthropic"').replace("gpt-4o-mini", "claude-haiku-4-5")
    price = load_catalog(write(tmp_path, text)).price("mini")
    usage = to_usage(anthropic.types.Usage.model_validate(body["usage"]))
    assert usage.input_tokens == 6_000
    expected = extract_usage(body, provider_id="anthropic").calc_price()
    assert price.cost(usage) == pytest.approx(float(expected.total_price), rel=1e-12)


def test_image_and_reasoning_tokens_are_priced_by_genai_prices(tmp_path: Path) -> None:
    """gpt-image-1 has its own input-image rate; a model without one prices them as plain tokens."""
    image_model = load_catalog(write(tmp_path, GOOD.replace("gpt-4o-mini", "gpt-image-1"))).price("mini")
    usage = Usage(input_tokens=1_000, output_tokens=100, image_tokens=600, reasoning_tokens=40)
    expected = calc_price(
        PriceUsage(input_tokens=1_000, output_tokens=100, input_image_tokens=600, output_reasoning_tokens=40),
        "gpt-image-1",
        provider_id="openai",
    )
    assert image_model.cost(usage) == pytest.approx(float(expected.total_price), rel=1e-12)
    # $5 per million text input tokens, $10 per million image input tokens.
    plain = image_model.cost(Usage(input_tokens=1_000, output_tokens=100))
    assert image_model.cost(usage) - plain == pytest.approx(600 * (10 - 5) / 1e6)
    mini = load_catalog(write(tmp_path, GOOD)).price("mini")
    assert mini.cost(usage) == pytest.approx(mini.cost(Usage(input_tokens=1_000, output_tokens=100)))


def test_features_default_by_kind_and_model(tmp_path: Path) -> None:
    catalog = load_catalog()
    assert Feature.LOGPROBS in catalog["gpt-4o"].features
    assert Feature.REASONING not in catalog["gpt-4o"].features
    assert catalog["claude-sonnet-4-6"].features >= {Feature.TOOLS, Feature.VISION, Feature.JSON_SCHEMA}
    assert Feature.TEMPERATURE not in catalog["claude-sonnet-4-6"].features
    assert Feature.VISION not in catalog["llama-3.3-70b"].features
    o3 = load_catalog(write(tmp_path, GOOD.replace("gpt-4o-mini", "o3"))).price("mini")
    assert o3.source.startswith("genai-prices:")
    reasoning = load_catalog(write(tmp_path, GOOD.replace("gpt-4o-mini", "o3")))["mini"].features
    assert Feature.REASONING in reasoning
    assert Feature.TEMPERATURE not in reasoning
    bad = GOOD + 'features = ["tools", "telepathy"]\n'
    with pytest.raises(ConfigError, match=r"deployment 'mini'.*features\.1"):
        load_catalog(write(tmp_path, bad))


def test_the_flat_price_fast_path_agrees_with_genai_prices_on_every_model() -> None:
    """Every model genai-prices knows, many plain usages: the fast path gives genai-prices' own float,
    or steps aside (tiers, per-request fees) and genai-prices answers."""
    rng = random.Random(13)
    now = datetime.now(tz=UTC)
    checked = fast = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for _ in range(5):
                usage = Usage(input_tokens=rng.randint(0, 300_000), output_tokens=rng.randint(0, 50_000))
                flat = _flat_cost(model, usage, now)
                if flat is None:
                    continue
                reference = model.calc_price(
                    PriceUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens),
                    provider,
                    genai_request_timestamp=now,
                )
                assert flat == float(reference.total_price), (provider.id, model.id, usage)
                fast += 1
            checked += 1
    assert checked > 500
    assert fast > 1000  # the fast path is the common case, not a corner
