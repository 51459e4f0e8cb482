"""Provider adapters: SDK error translation, simulation switch, and the demo catalog end to end."""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import time
from typing import Any

import anthropic
import httpx2
import httpx2._urls as httpx2_urls
import openai
import pytest
from httpx2._urlparse import urlparse

from router_core import (
    AuthenticationError,
    BadRequestError,
    ChatRequest,
    ContextLengthError,
    FakeClock,
    InMemoryFleetState,
    ProviderKind,
    ProviderServerError,
    RateLimitedError,
    Refusal,
    Router,
    RouterSettings,
    SimulateMode,
    Task,
    load_catalog,
)
from router_core.catalog import Deployment
from router_core.errors import (
    InvalidRequestError,
    MalformedResponseError,
    ProviderConnectionError,
    ProviderTimeoutError,
)
from router_core.providers import (
    AnthropicProvider,
    OpenAIProvider,
    Provider,
    build_providers,
    is_simulated,
    map_provider_error,
    parse_retry_after,
)
from router_core.providers.base import ProviderReply
from router_core.providers.factory import OpenAIClient
from router_core.providers.http import AsyncClient
from router_core.providers.openai import openai_body, processing_s
from router_core.sim import SimTransport, SimWorld, sim_http_client
from tests.conftest import RouterFactory, deployment, make_catalog

REQUEST = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")


def openai_status(
    status: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> openai.APIStatusError:
    response = httpx2.Response(status, json=body, headers=headers, request=REQUEST)
    client = openai.AsyncOpenAI(api_key="k", max_retries=0)
    return client._make_status_error_from_response(response)  # the SDK's own factory


def anthropic_status(
    status: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> anthropic.APIStatusError:
    response = httpx2.Response(status, json=body, headers=headers, request=REQUEST)
    client = anthropic.AsyncAnthropic(api_key="k", max_retries=0)
    return client._make_status_error_from_response(response)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (openai_status(429, {"error": {"message": "slow down"}}, {"retry-after": "3"}), RateLimitedError),
        (openai_status(500, {"error": {"message": "boom"}}), ProviderServerError),
        (openai_status(503, {"error": {"message": "unavailable"}}), ProviderServerError),
        (openai_status(401, {"error": {"message": "bad key"}}), AuthenticationError),
        (openai_status(403, {"error": {"message": "no access"}}), AuthenticationError),
        (openai_status(400, {"error": {"message": "bad", "code": "invalid_value"}}), BadRequestError),
        (
            openai_status(400, {"error": {"message": "too long", "code": "context_length_exceeded"}}),
            ContextLengthError,
        ),
        (
            anthropic_status(529, {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}),
            ProviderServerError,
        ),
        (
            anthropic_status(
                400,
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "prompt is too long: 9 > 5"},
                },
            ),
            ContextLengthError,
        ),
        (
            anthropic_status(
                401, {"type": "error", "error": {"type": "authentication_error", "message": "x"}}
            ),
            AuthenticationError,
        ),
        (openai.APITimeoutError(request=REQUEST), ProviderTimeoutError),
        (anthropic.APIConnectionError(request=REQUEST), ProviderConnectionError),
        (httpx2.ConnectError("refused", request=REQUEST), ProviderConnectionError),
        (
            openai.APIResponseValidationError(httpx2.Response(200, request=REQUEST), None),
            MalformedResponseError,
        ),
    ],
)
def test_sdk_errors_map_to_one_tree(exc: BaseException, expected: type[Exception]) -> None:
    mapped = map_provider_error(exc, "dep-x")
    assert type(mapped) is expected
    assert mapped.deployment == "dep-x"


def test_value_errors_depend_on_stage() -> None:
    # Raised by the SDK before sending: the request is unacceptable, fail over.
    refused = map_provider_error(ValueError("Streaming is strongly recommended"), "d")
    assert type(refused) is BadRequestError
    # Raised while reading a 2xx body: the provider sent garbage, worth a retry.
    garbled = map_provider_error(json.JSONDecodeError("Expecting value", "{", 1), "d", parsing=True)
    assert type(garbled) is MalformedResponseError
    assert garbled.retryable


def test_connection_errors_name_the_url_with_password_masked() -> None:
    request = httpx2.Request("POST", "http://user:s3cret@llm.internal.test:8000/v1/chat/completions")
    exc = openai.APIConnectionError(request=request)
    exc.__cause__ = httpx2.ConnectError("Connection refused", request=request)
    message = str(map_provider_error(exc, "local-vllm"))
    assert "http://user:***@llm.internal.test:8000/v1/chat/completions" in message
    assert "s3cret" not in message
    assert "Connection refused" in message
    assert "base_url" in message


def test_keys_echoed_by_a_provider_are_redacted() -> None:
    """Error messages are stored (attempts, jobs, API answers): a key a provider echoes must not be."""
    body: dict[str, object] = {
        "error": {"message": "Incorrect API key provided: sk-proj-AbC123dEf456GhI789."}
    }
    message = str(map_provider_error(openai_status(401, body), "gpt"))
    assert "AbC123" not in message
    assert "sk-proj-***" in message


def test_unknown_exceptions_are_not_swallowed() -> None:
    with pytest.raises(ZeroDivisionError):
        map_provider_error(ZeroDivisionError(), "dep-x")


def test_retry_after_forms() -> None:
    assert parse_retry_after(httpx2.Headers({"retry-after": "2"})) == 2.0
    assert parse_retry_after(httpx2.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx2.Headers({"retry-after": date}), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(httpx2.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx2.Headers({})) is None
    mapped = map_provider_error(openai_status(429, {"error": {"message": "x"}}, {"retry-after": "7"}), "d")
    assert mapped.retry_after == 7.0


def test_simulation_switch() -> None:
    catalog = load_catalog()
    dep = catalog["gpt-4o-mini"]
    assert is_simulated(dep, SimulateMode.AUTO, {}) is True
    assert is_simulated(dep, SimulateMode.AUTO, {"OPENAI_API_KEY": ""}) is True
    assert is_simulated(dep, SimulateMode.AUTO, {"OPENAI_API_KEY": "sk-live"}) is False
    assert is_simulated(dep, SimulateMode.ALWAYS, {"OPENAI_API_KEY": "sk-live"}) is True
    assert is_simulated(dep, SimulateMode.NEVER, {}) is False
    sim_dep = make_catalog([deployment("s-a")])["s-a"]
    assert is_simulated(sim_dep, SimulateMode.NEVER, {}) is True


async def test_every_demo_deployment_answers_through_its_sdk(clock: FakeClock) -> None:
    catalog = load_catalog()
    router = Router.from_settings(RouterSettings(simulate=SimulateMode.ALWAYS), catalog=catalog, clock=clock)
    async with router:
        assert router.sim_world is not None
        for dep in catalog.values():
            router.sim_world.set_profile(
                dep.id, dep.sim.model_copy(update={"latency_ms": 0, "error_rate": 0})
            )
        for dep_id in (d.id for d in catalog.values() if d.task is Task.CHAT):
            request = ChatRequest.model_validate(
                {"messages": [{"role": "user", "content": "ping"}], "model": dep_id, "max_tokens": 16}
            )
            result = await router.complete(request)
            assert result.deployment == dep_id
            assert result.simulated
            assert result.cost_usd > 0
        embedded = await router.embed(["ping"])
        assert embedded.simulated
        assert embedded.cost_usd > 0


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("rate_limit", RateLimitedError),
        ("server_error", ProviderServerError),
        ("malformed", MalformedResponseError),
    ],
)
async def test_embedding_errors_map_like_chat(fault: str, error: type[Exception]) -> None:
    catalog = make_catalog(
        [deployment("emb-a", task="embedding", sim={"script": [fault], "retry_after_s": 3})]
    )
    providers, _ = build_providers(catalog, simulate=SimulateMode.ALWAYS)
    provider = providers["emb-a"]
    try:
        with pytest.raises(error) as info:
            await provider.embed(["hello"], dimensions=8)
        if fault == "rate_limit":
            assert isinstance(info.value, RateLimitedError)
            assert info.value.retry_after == 3
        reply = await provider.embed(["hello", "world"], dimensions=8)
        assert [len(v) for v in reply.vectors] == [8, 8]
        assert reply.simulated
    finally:
        await provider.aclose()


async def test_bad_request_fails_over_without_retry(make_router: RouterFactory, clock: FakeClock) -> None:
    # The sim world has no profile for "ghost-a": it answers 404, which no retry can fix.
    catalog = make_catalog(
        [deployment("ghost-a", price={"input_per_mtok": 0.1, "output_per_mtok": 0.1}), deployment("real-b")]
    )
    world = SimWorld({"real-b": catalog["real-b"].sim})
    providers, _ = build_providers(catalog, simulate=SimulateMode.ALWAYS, sim_world=world)
    async with Router(catalog, providers, clock=clock) as router:
        result = await router.complete(
            ChatRequest.model_validate(
                {"messages": [{"role": "user", "content": "hi"}], "preferences": {"strategy": "cost"}}
            )
        )
    assert [(a.deployment, a.error_class, a.status_code) for a in result.attempts] == [
        ("ghost-a", "BadRequestError", 404),
        ("real-b", None, None),
    ]
    assert clock.sleeps == []


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEQ_SIMULATE", "always")
    monkeypatch.setenv("ROUTEQ_MAX_CANDIDATES", "2")
    settings = RouterSettings()
    assert settings.simulate is SimulateMode.ALWAYS
    assert settings.max_candidates == 2


def direct_provider(dep: Deployment, http: httpx2.AsyncClient) -> Provider:
    """An adapter for `dep` on the given HTTP client (which reaches the sim)."""
    root = f"http://sim.routeq.invalid/{dep.id}"
    if dep.kind is ProviderKind.ANTHROPIC:
        return AnthropicProvider(dep, anthropic.AsyncAnthropic(api_key="k", base_url=root, http_client=http))
    return OpenAIProvider(dep, openai.AsyncOpenAI(api_key="k", base_url=f"{root}/v1", http_client=http))


class RecordingTransport(SimTransport):
    """The sim transport, keeping each request's JSON body."""

    def __init__(self, world: SimWorld) -> None:
        super().__init__(world)
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(json.loads(request.content))
        return await super().handle_async_request(request)


@pytest.mark.parametrize(("kind", "sent_temperature"), [("anthropic", None), ("openai", 1.5)])
async def test_wire_request_shape(kind: str, sent_temperature: float | None) -> None:
    """The Messages API has no temperature: a request setting one is not routed there at all."""
    catalog = make_catalog([deployment("dep-a", kind=kind, model="some-model")])
    dep = catalog["dep-a"]
    transport = RecordingTransport(SimWorld({"dep-a": dep.sim}))
    provider = direct_provider(
        dep, httpx2.AsyncClient(transport=transport, base_url="http://sim.routeq.invalid")
    )
    request = ChatRequest.model_validate(
        {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            **({} if sent_temperature is None else {"temperature": sent_temperature}),
        }
    )
    async with Router(catalog, {"dep-a": provider}) as router:
        await router.complete(request)
        if kind == "anthropic":
            with pytest.raises(
                InvalidRequestError, match=r"temperature: no deployment .*'temperature' feature"
            ):
                await router.complete(request.model_copy(update={"temperature": 1.5}))
    body = transport.bodies[0]
    assert body["model"] == "some-model"
    assert body.get("temperature") == sent_temperature
    # No max_tokens in the request: the default cap is sent, so the call's cost has a bound
    # (as max_completion_tokens to OpenAI itself, whose reasoning models refuse max_tokens).
    assert body["max_tokens" if kind == "anthropic" else "max_completion_tokens"] == 512
    if kind == "anthropic":
        assert body["system"] == "Be brief."
        assert body["messages"] == [{"role": "user", "content": "Hi"}]
    else:
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    "base_url",
    ["http://sim.routeq.invalid/dep-a/v1", "http://sim.routeq.invalid/dep-a/v1/", "https://h:8443/openai/v1"],
)
async def test_a_chat_call_goes_to_the_url_the_sdk_makes_of_its_base_url(base_url: str) -> None:
    """OpenAIProvider posts to an absolute URL made once: the one the SDK's relative path gives."""
    dep = make_catalog([deployment("dep-a", kind="openai", model="some-model")])["dep-a"]
    urls: list[str] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        urls.append(str(request.url))
        message = {"role": "assistant", "content": "Hello"}
        return httpx2.Response(
            200, json={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        )

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    client = openai.AsyncOpenAI(api_key="k", base_url=base_url, http_client=http, max_retries=0)
    body = {"model": "some-model", "messages": [{"role": "user", "content": "Hi"}]}
    await client.post("/chat/completions", cast_to=httpx2.Response, body=body)
    reply = await OpenAIProvider(dep, client).complete(ask_request("Hi"), max_tokens=16, timeout_s=5)
    assert reply.choices
    assert urls[1] == urls[0] == base_url.rstrip("/") + "/chat/completions"


@pytest.mark.parametrize(
    "given",
    [
        None,
        {"accept": "b", "X-Y": "1"},
        [("X-A", "1"), ("X-A", "2"), ("user-agent", "z")],
        [(b"ACCEPT", b"q")],
        httpx2.Headers({"Connection": "close"}),
    ],
)
def test_the_http_clients_header_merge_is_httpx2s(given: Any) -> None:
    """providers.http.AsyncClient merges its headers with a request's in one pass: the same headers,
    in the same order, as httpx2's own merge, whatever form the request's take."""
    client = AsyncClient(headers={"User-Agent": "x", "Accept": "a"})
    assert (
        client._merge_headers(given).raw
        == httpx2.Headers(httpx2.AsyncClient._merge_headers(client, given)).raw
    )


async def test_a_chat_call_sends_what_the_sdks_post_sends() -> None:
    """The factory's clients (headers kept, merged in one pass) and the adapter's options template
    send the request the SDK's own `post` sends through a plain httpx2 client: same URL, headers
    (the SDK's, the HTTP client's, their order) and body."""
    dep = make_catalog([deployment("dep-a", kind="openai", model="some-model")])["dep-a"]
    sent: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        message = {"role": "assistant", "content": "Hello"}
        return httpx2.Response(
            200, json={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        )

    base_url = "https://h.invalid/v1"
    plain = openai.AsyncOpenAI(
        api_key="k",
        base_url=base_url,
        max_retries=0,
        organization="org",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer), headers={"X-Mine": "1"}),
    )
    ours = OpenAIClient(
        api_key="k",
        base_url=base_url,
        max_retries=0,
        organization="org",
        http_client=AsyncClient(transport=httpx2.MockTransport(answer), headers={"X-Mine": "1"}),
    )
    provider = OpenAIProvider(dep, ours)
    request = ask_request("Hi, ünïcode")
    for _ in range(2):  # the first call asks the platform; the second uses the kept headers
        body = openai_body(request, dep, 16)
        await plain.post("/chat/completions", cast_to=httpx2.Response, body=body, options={"timeout": 5})
        await provider.complete(request, max_tokens=16, timeout_s=5)
    for theirs, mine in zip(sent[::2], sent[1::2], strict=True):
        assert (mine.method, mine.url) == (theirs.method, theirs.url)
        assert json.loads(mine.content) == json.loads(theirs.content)
        assert mine.headers.raw == theirs.headers.raw, (mine.headers.raw, theirs.headers.raw)


@pytest.mark.parametrize("sim_url", [None, "http://127.0.0.1:9"], ids=["in-process", "network-client"])
async def test_calls_after_the_first_parse_no_url(
    sim_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The factory's clients (the SDK's and the HTTP client under it) parse each URL once."""
    catalog = make_catalog([deployment("dep-a", kind="openai", model="some-model")])
    provider = build_providers(catalog, simulate=SimulateMode.ALWAYS, sim_url=sim_url)[0]["dep-a"]
    assert isinstance(provider, OpenAIProvider)
    client = provider._client
    parsed: list[str] = []

    def counting(url: str = "", **kwargs: Any) -> Any:
        parsed.append(url)
        return urlparse(url, **kwargs)

    monkeypatch.setattr(httpx2_urls, "urlparse", counting)

    def build() -> httpx2.Request:  # as the SDK's _build_request: its URL, made a string again
        return client._client.build_request("POST", str(client._prepare_url(provider._chat_url)))

    first = build()
    firsts = len(parsed)
    again = [build() for _ in range(3)]
    assert firsts == 2  # the SDK's parse of the URL, and the HTTP client's of the string made of it
    assert len(parsed) == firsts
    assert {str(r.url) for r in again} == {str(first.url)}
    client.base_url = "http://elsewhere.invalid/v1"  # a relative URL's parse depends on the base
    assert str(client._prepare_url("/models")) == "http://elsewhere.invalid/v1/models"
    await provider.aclose()


def ask_request(text: str) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": text}]})


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_stopping_a_stream_early_releases_the_response(kind: str) -> None:
    catalog = make_catalog([deployment("dep-a", kind=kind, sim={"output_tokens": 50})])
    responses: list[httpx2.Response] = []

    async def keep(response: httpx2.Response) -> None:
        responses.append(response)

    http = sim_http_client(SimWorld({"dep-a": catalog["dep-a"].sim}))
    http.event_hooks["response"] = [keep]
    async with Router(catalog, {"dep-a": direct_provider(catalog["dep-a"], http)}) as router:
        request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Tell me a story"}]})
        parts = router.stream(request)
        assert isinstance(await anext(parts), str)
        await parts.aclose()  # the consumer walks away after the first piece
        assert len(responses) == 1
        assert responses[0].is_closed
        assert (await router.fleet.snapshot(["dep-a"]))["dep-a"].in_flight == 0


def held_world(clock: FakeClock, kind: str, hold_ms: float) -> tuple[Deployment, SimWorld]:
    """A deployment answering `hold_ms` after it counts a call, on `clock`, limited to 1 call a second."""
    sim = {"latency_ms": hold_ms, "rpm": 1, "window_s": 1.0}
    dep = make_catalog([deployment("dep-a", kind=kind, rpm=1, rate_window_s=1.0, sim=sim)])["dep-a"]
    return dep, SimWorld({"dep-a": dep.sim}, clock=clock)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_openai_sdk_reads_how_long_the_provider_held_the_call(
    clock: FakeClock, stream: bool
) -> None:
    """The sim sends `openai-processing-ms` as OpenAI does (whole ms from counting the call to
    answering); the adapter reads it through the SDK's response, less a millisecond for rounding."""
    dep, world = held_world(clock, "openai", 250)
    provider = direct_provider(dep, sim_http_client(world))
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}]})
    try:
        if stream:
            parts = [part async for part in provider.stream(request, max_tokens=16, timeout_s=5)]
            reply = parts[-1]
        else:
            reply = await provider.complete(request, max_tokens=16, timeout_s=5)
    finally:
        await provider.aclose()
    assert isinstance(reply, ProviderReply)
    assert reply.server_s == pytest.approx(0.249)


async def test_an_anthropic_reply_says_nothing_of_the_providers_hold(clock: FakeClock) -> None:
    dep, world = held_world(clock, "anthropic", 250)
    provider = direct_provider(dep, sim_http_client(world))
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}]})
    try:
        reply = await provider.complete(request, max_tokens=16, timeout_s=5)
    finally:
        await provider.aclose()
    assert reply.server_s is None


@pytest.mark.parametrize(
    ("headers", "held_s"),
    [
        ({"openai-processing-ms": "250"}, 0.249),
        ({"openai-processing-ms": "0"}, 0.0),
        ({"openai-processing-ms": "12.5"}, 0.0115),
        ({}, None),
        ({"openai-processing-ms": "soon"}, None),
        ({"openai-processing-ms": "nan"}, None),
        ({"openai-processing-ms": "inf"}, None),
        ({"openai-processing-ms": "-40"}, None),
    ],
)
def test_a_missing_or_malformed_processing_time_says_nothing(
    headers: dict[str, str], held_s: float | None
) -> None:
    """None: the call's count falls back to the rule without the header (its answer, or its start
    plus the margin); 0 is a hold the provider did report, so the answer bounds the arrival."""
    assert processing_s(headers) == (None if held_s is None else pytest.approx(held_s))


async def test_the_router_frees_a_slot_a_window_after_the_answer_less_the_providers_hold(
    clock: FakeClock,
) -> None:
    """End to end through the SDK: a call the sim held 250 ms counts until a window after its
    answer less 249 ms (its start plus 1 ms here, with no network), not after the answer."""
    dep, world = held_world(clock, "openai", 250)
    fleet = InMemoryFleetState(clock=clock)
    started = clock.now()
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}]})
    providers: dict[str, Provider] = {"dep-a": direct_provider(dep, sim_http_client(world))}
    async with Router(make_catalog([dep.model_dump()]), providers, fleet=fleet, clock=clock) as router:
        await router.complete(request)
        assert clock.now() == pytest.approx(started + 0.25)
        clock.advance(0.75)  # a window after the start: it may have arrived 1 ms after it
        assert (await fleet.admit(dep, 10)).refusal is Refusal.RPM
        clock.advance(0.0011)
        assert (await fleet.admit(dep, 10)).admitted


# Run in a fresh interpreter: which SDKs building the providers of a catalog loads.
_SDKS_LOADED = """
import json, sys
from router_core.providers import build_providers
from tests.conftest import deployment, make_catalog
kinds = json.loads(sys.argv[1])
build_providers(make_catalog([deployment(f"d{n}", kind=kind) for n, kind in enumerate(kinds)]))
print(json.dumps(sorted(sdk for sdk in ("openai", "anthropic") if sdk in sys.modules)))
"""


@pytest.mark.parametrize(
    ("kinds", "loaded"),
    [(["openai", "sim"], ["openai"]), (["openai", "anthropic"], ["anthropic", "openai"])],
)
def test_the_anthropic_sdk_is_imported_only_for_an_anthropic_deployment(
    kinds: list[str], loaded: list[str]
) -> None:
    """A worker without Anthropic deployments starts without importing the anthropic SDK (seconds)."""
    done = subprocess.run(
        [sys.executable, "-c", _SDKS_LOADED, json.dumps(kinds)], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == loaded
