"""Embeddings: the sim's vectors (paraphrases close, unrelated text far), the SDK path, Router.embed."""

from __future__ import annotations

import math
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from router_core import (
    AllAttemptsFailedError,
    ConfigError,
    FakeClock,
    InvalidRequestError,
    ProviderKind,
    Router,
    RouterSettings,
    SimulateMode,
    load_catalog,
)
from router_core.errors import BadRequestError
from router_core.providers.anthropic import AnthropicProvider
from router_core.sim import SimProfile, SimWorld, sim_http_client
from router_core.sim.embeddings import content_words, embed
from router_core.tokens import estimate_tokens
from tests.conftest import RouterFactory, deployment, make_catalog

# A question, and ways of asking it that differ only in order, case, punctuation, filler,
# contractions, inflections and synonyms.
PARAPHRASES = {
    "What's the capital of France?": [
        "what is the capital of france",
        "Tell me the capital of France, please.",
        "France: capital?",
        "Could you tell me what the capital of France is?",
    ],
    "How do I buy a large car?": [
        "How can I purchase a big automobile?",
        "buying big cars - how?",
        "Please explain how to buy a huge car",
    ],
    "Write a Python function that reverses a linked list": [
        "Reverse linked lists with a python function: write it",
        "Can you write me a python function reversing a linked list?",
    ],
    "Quick way to start learning the guitar": [
        "fast way to begin learning guitar",
        "What's a quick way to start to learn the guitar?",
    ],
}

UNRELATED = [
    "What's the capital of France?",
    "How do I buy a large car?",
    "Write a Python function that reverses a linked list",
    "Summarize the plot of Hamlet in three sentences",
    "What is the boiling point of water at sea level?",
    "Translate hello into Spanish",
    "Explain quantum entanglement simply",
    "Recommend a book about Roman history",
    "Fix the bug in my SQL query",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "Best practices for securing a home wifi network",
]

# ~8 content words; each variant replaces one of them.
EIGHT = "Write a poem about the ocean waves at sunset on a cold winter beach"
ONE_WORD_CHANGED = [
    EIGHT.replace("poem", "story"),
    EIGHT.replace("ocean", "river"),
    EIGHT.replace("sunset", "sunrise"),
    EIGHT.replace("winter", "summer"),
]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("dimensions", [256, 1536])
def test_paraphrases_are_close_and_unrelated_prompts_far(dimensions: int) -> None:
    for original, variants in PARAPHRASES.items():
        for variant in variants:
            assert set(content_words(variant)) == set(content_words(original)), variant
            assert cosine(embed(original, dimensions), embed(variant, dimensions)) >= 0.97, variant
    worst = max(
        abs(cosine(embed(a, dimensions), embed(b, dimensions)))
        for i, a in enumerate(UNRELATED)
        for b in UNRELATED[i + 1 :]
    )
    assert worst <= 0.3


@pytest.mark.parametrize("dimensions", [256, 1536])
def test_one_content_word_changed_falls_below_the_default_threshold(dimensions: int) -> None:
    assert len(content_words(EIGHT)) == 8
    for variant in ONE_WORD_CHANGED:
        similarity = cosine(embed(EIGHT, dimensions), embed(variant, dimensions))
        assert 0.7 < similarity < 0.95, variant


def test_vectors_are_unit_length_deterministic_and_sized() -> None:
    for text in [*UNRELATED, "what is it?", "?!", "x"]:
        vector = embed(text, 64)
        assert len(vector) == 64
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)
        assert vector == embed(text, 64)
    # No content word: the stopwords themselves are the features, so such texts still differ.
    assert cosine(embed("what is it?", 256), embed("who are you?", 256)) < 0.5


def test_near_spellings_are_nearer_than_different_words() -> None:
    base = embed("colour of the ocean", 1536)
    assert cosine(base, embed("color of the ocean", 1536)) > cosine(base, embed("depth of the ocean", 1536))


# --- the OpenAI wire through the official SDK and SimTransport -------------------------------------


@pytest.fixture
async def client() -> Any:
    world = SimWorld({"emb": SimProfile()})
    http = sim_http_client(world)
    sdk = openai.AsyncOpenAI(
        api_key="sim", base_url="http://sim.routeq.invalid/emb/v1", http_client=http, max_retries=0
    )
    yield sdk
    await sdk.close()


async def test_sdk_float_and_base64_agree(client: openai.AsyncOpenAI) -> None:
    texts = ["What's the capital of France?", "Tell me the capital of France, please."]
    as_base64 = await client.embeddings.create(model="text-embedding-3-small", input=texts, dimensions=256)
    as_float = await client.embeddings.create(
        model="text-embedding-3-small", input=texts, dimensions=256, encoding_format="float"
    )
    assert [d.embedding for d in as_base64.data] == [d.embedding for d in as_float.data]
    assert [d.index for d in as_float.data] == [0, 1]
    assert as_float.data[0].embedding == embed(texts[0], 256)
    assert as_float.usage.prompt_tokens == sum(estimate_tokens(t) for t in texts)
    assert as_float.usage.total_tokens == as_float.usage.prompt_tokens
    assert as_float.model == "text-embedding-3-small"


async def test_sdk_single_string_gets_the_default_dimensions(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(model="m", input="hello there", encoding_format="float")
    assert len(result.data) == 1
    assert len(result.data[0].embedding) == 1536


async def test_same_request_same_bytes(client: openai.AsyncOpenAI) -> None:
    bodies = []
    for _ in range(2):
        raw = await client.embeddings.with_raw_response.create(
            model="m", input=["a cat", "a dog"], dimensions=32
        )
        assert raw.headers["x-routeq-simulated"] == "1"
        bodies.append(raw.content)
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": ["fine", ""]}, "input"),
        ({"input": []}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": 4096}, "dimensions"),
    ],
)
async def test_bad_requests_are_400s_naming_the_param(
    client: openai.AsyncOpenAI, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.embeddings.create(model="m", encoding_format="float", **kwargs)
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == param


async def test_unknown_deployment_is_a_404() -> None:
    async with sim_http_client(SimWorld({})) as http:
        response = await http.post("/ghost/v1/embeddings", json={"model": "m", "input": "x"})
    assert response.status_code == 404


async def test_input_longer_than_the_context_window_is_refused() -> None:
    world = SimWorld({"emb": SimProfile(context_window=10)})
    async with sim_http_client(world) as http:
        response = await http.post("/emb/v1/embeddings", json={"model": "m", "input": ["ok", "y" * 100]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


# --- Router.embed ----------------------------------------------------------------------------------


def embedding_catalog(**sim: Any) -> Any:
    return make_catalog(
        [
            deployment("chat-a"),
            deployment("emb-a", task="embedding", dimensions=64, sim={"seed": 1, **sim}),
        ]
    )


async def test_router_embeds_on_the_demo_catalog_at_genai_prices(clock: FakeClock) -> None:
    catalog = load_catalog()
    router = Router.from_settings(RouterSettings(simulate=SimulateMode.ALWAYS), catalog=catalog, clock=clock)
    async with router:
        assert router.sim_world is not None
        dep = catalog.embedder()
        router.sim_world.set_profile(dep.id, SimProfile())
        texts = [
            "What's the capital of France?",
            "Tell me the capital of France, please.",
            "Why is the sky blue?",
        ]
        result = await router.embed(texts)
    assert (result.deployment, result.model) == ("openai-embed", "text-embedding-3-small")
    assert len(result.vectors) == 3
    assert all(len(v) == 256 for v in result.vectors)
    assert result.simulated
    assert result.input_tokens == sum(estimate_tokens(t) for t in texts)
    expected = calc_price(
        PriceUsage(input_tokens=result.input_tokens), "text-embedding-3-small", provider_id="openai"
    )
    assert result.cost_usd == pytest.approx(float(expected.total_price), rel=1e-12)
    assert result.cost_usd > 0
    assert cosine(result.vectors[0], result.vectors[1]) >= 0.97
    assert abs(cosine(result.vectors[0], result.vectors[2])) <= 0.3


async def test_rate_limit_is_retried_after_retry_after_on_the_clock(
    make_router: RouterFactory, clock: FakeClock
) -> None:
    router = make_router(embedding_catalog(script=["rate_limit", "server_error", "ok"], retry_after_s=2))
    result = await router.embed(["hello world"])
    assert len(result.vectors[0]) == 64
    assert len(clock.sleeps) == 2
    assert clock.sleeps[0] >= 2.0  # the 429's Retry-After
    assert result.cost_usd == pytest.approx(result.input_tokens * 1.0e-6)


async def test_gives_up_with_every_attempt(make_router: RouterFactory, clock: FakeClock) -> None:
    router = make_router(embedding_catalog(script=["server_error", "malformed", "drop"]))
    with pytest.raises(AllAttemptsFailedError) as info:
        await router.embed(["hello world"])
    classes = [a.error_class for a in info.value.attempts]
    assert classes == ["ProviderServerError", "MalformedResponseError", "ProviderConnectionError"]
    assert all(a.deployment == "emb-a" for a in info.value.attempts)
    assert len(clock.sleeps) == 2


async def test_a_retry_after_over_the_limit_gives_up_at_once(
    make_router: RouterFactory, clock: FakeClock
) -> None:
    router = make_router(embedding_catalog(script=["rate_limit"], retry_after_s=600), max_retry_after_s=30)
    with pytest.raises(AllAttemptsFailedError) as info:
        await router.embed(["hello world"])
    assert [a.error_class for a in info.value.attempts] == ["RateLimitedError"]
    assert clock.sleeps == []


async def test_embed_refuses_what_it_cannot_do(make_router: RouterFactory) -> None:
    router = make_router(embedding_catalog())
    with pytest.raises(ConfigError, match="chat deployment cannot embed"):
        await router.embed(["x"], deployment="chat-a")
    with pytest.raises(ConfigError, match="unknown deployment"):
        await router.embed(["x"], deployment="ghost")
    with pytest.raises(InvalidRequestError, match="texts"):
        await router.embed([])
    with pytest.raises(InvalidRequestError, match="texts"):
        await router.embed(["fine", ""])
    chat_only = make_router(make_catalog([deployment("chat-a")]))
    with pytest.raises(ConfigError, match='task = "embedding"'):
        await chat_only.embed(["x"])


async def test_anthropic_adapter_has_no_embeddings() -> None:
    dep = make_catalog([deployment("claude-a", kind="anthropic", model="claude-sim")])["claude-a"]
    assert dep.kind is ProviderKind.ANTHROPIC
    async with httpx2.AsyncClient() as http:
        provider = AnthropicProvider(dep, anthropic.AsyncAnthropic(api_key="x", http_client=http))
        with pytest.raises(BadRequestError, match="no embeddings"):
            await provider.embed(["x"], dimensions=None)
