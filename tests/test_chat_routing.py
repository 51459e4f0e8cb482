"""Capability-aware routing: what a request needs, which deployments can serve it, and why not.

The planner infers the features a request needs from the fields it sets, excludes a deployment
that lacks one with `unsupported: <feature>`, and a field no usable deployment honours is refused
by name before anything runs. `preferences.allow_fallbacks: false` keeps a pinned model.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from router_core import ChatRequest, ExclusionReason, InvalidRequestError, NoRouteError, build_plan
from router_core.catalog import Catalog, load_catalog
from router_core.chat import Feature, output_problem
from router_core.planner import check_references
from tests.conftest import RouterFactory, deployment, make_catalog

DEMO = load_catalog()
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def ask(text: str = "What is the weather in Paris?", **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": text}], **fields})


def with_image(**fields: Any) -> ChatRequest:
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": PNG}},
    ]
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": parts}], **fields})


def excluded(catalog: Catalog, request: ChatRequest) -> dict[str, str]:
    plan = build_plan(request, catalog, {})
    return {e.deployment: e.detail for e in plan.excluded if e.reason is ExclusionReason.UNSUPPORTED}


@pytest.fixture
def mixed() -> Catalog:
    return make_catalog(
        [
            deployment("text-a", features=["stop", "temperature"]),
            deployment("vision-b", features=["vision", "tools", "json_schema"]),
            deployment("all-c"),  # kind sim: every feature
        ]
    )


def test_an_image_request_is_not_planned_on_text_only_deployments(mixed: Catalog) -> None:
    plan = build_plan(with_image(), mixed, {})
    assert [c.deployment for c in plan.candidates] == ["vision-b", "all-c"] or {
        c.deployment for c in plan.candidates
    } == {"vision-b", "all-c"}
    reasons = {e.deployment: (e.reason, e.detail) for e in plan.excluded}
    assert reasons == {"text-a": (ExclusionReason.UNSUPPORTED, "unsupported: vision")}


def test_every_missing_feature_is_named(mixed: Catalog) -> None:
    request = ask(tools=[WEATHER], logprobs=True, temperature=0.2)
    assert excluded(mixed, request) == {
        "text-a": "unsupported: tools, logprobs",
        "vision-b": "unsupported: logprobs, temperature",  # in the order of the Feature enum
    }


@pytest.mark.parametrize(
    ("fields", "feature"),
    [
        ({"tools": [WEATHER]}, Feature.TOOLS),
        ({"tools": [WEATHER], "parallel_tool_calls": False}, Feature.PARALLEL_TOOL_CALLS),
        ({"response_format": {"type": "json_object"}}, Feature.JSON_OBJECT),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                }
            },
            Feature.JSON_SCHEMA,
        ),
        ({"logprobs": True, "top_logprobs": 2}, Feature.LOGPROBS),
        ({"seed": 7}, Feature.SEED),
        ({"reasoning_effort": "low"}, Feature.REASONING),
        ({"stop": ["\n\n"]}, Feature.STOP),
        ({"top_p": 0.9}, Feature.TOP_P),
        ({"presence_penalty": 0.5}, Feature.PENALTIES),
        ({"logit_bias": {"50256": -100}}, Feature.LOGIT_BIAS),
        ({"service_tier": "flex"}, Feature.SERVICE_TIER),
    ],
)
def test_each_field_needs_its_feature(fields: dict[str, Any], feature: Feature) -> None:
    assert feature in ask(**fields).required_features()


def test_plain_text_and_neutral_values_need_nothing() -> None:
    assert ask().required_features() == {}
    assert (
        ask(logprobs=False, service_tier="auto", n=2, user="u-1", metadata={"k": "v"}).required_features()
        == {}
    )


def test_the_demo_catalog_routes_each_feature_to_the_models_that_have_it() -> None:
    # Logprobs: OpenAI has them, the Messages API does not.
    assert excluded(DEMO, ask(logprobs=True))["claude-sonnet-4-6"] == "unsupported: logprobs"
    assert "gpt-4o" not in excluded(DEMO, ask(logprobs=True))
    # Images: llama-3.3-70b and mistral-large read text only.
    images = excluded(DEMO, with_image())
    assert set(images) == {"llama-3.3-70b", "mistral-large"}
    # Reasoning effort: none of OpenAI's gpt-4o family, both Claude models, gemini-2.5-pro.
    reasoning = excluded(DEMO, ask(reasoning_effort="high"))
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1-nano"} <= set(reasoning)
    assert "claude-haiku-4-5" not in reasoning
    assert "gemini-2.5-pro" not in reasoning
    # Temperature: the Messages API of anthropic SDK 2.x has no sampling parameters.
    assert excluded(DEMO, ask(temperature=0.3))["claude-haiku-4-5"] == "unsupported: temperature"


def test_a_field_no_deployment_honours_is_refused_by_name() -> None:
    claude_only = make_catalog(
        [deployment("claude-a", kind="anthropic", model="claude-haiku-4-5", price=None)]
    )
    with pytest.raises(
        InvalidRequestError,
        match=r"^logit_bias: no deployment in the catalog honours it \(none has the 'logit_bias' feature\)",
    ) as caught:
        check_references(ask(logit_bias={"1": 5}), claude_only)
    assert caught.value.field == "logit_bias"
    check_references(ask(tools=[WEATHER]), claude_only)  # tools it has


def test_allow_fallbacks_false_keeps_the_pinned_model(mixed: Catalog) -> None:
    pinned = ask(model="vision-b", preferences={"allow_fallbacks": False})
    plan = build_plan(pinned, mixed, {})
    assert [c.deployment for c in plan.candidates] == ["vision-b"]
    reasons = {e.deployment: e.reason for e in plan.excluded}
    assert reasons == {"text-a": ExclusionReason.NOT_PINNED, "all-c": ExclusionReason.NOT_PINNED}
    # By default the rest of the plan follows the pinned model as fallbacks.
    assert len(build_plan(ask(model="vision-b"), mixed, {}).candidates) == 3


def test_a_pinned_model_without_the_feature_is_refused_when_it_may_not_fall_back(mixed: Catalog) -> None:
    request = ask(model="text-a", tools=[WEATHER], preferences={"allow_fallbacks": False})
    with pytest.raises(InvalidRequestError, match=r"^tools: model 'text-a' cannot honour it"):
        check_references(request, mixed)
    # Fallbacks allowed: the request is valid (others have tools), but a plan pinned to a model
    # that cannot serve it says so by name, with the reason, rather than quietly using another.
    with pytest.raises(NoRouteError, match="'text-a' cannot serve this request") as caught:
        build_plan(ask(model="text-a", tools=[WEATHER]), mixed, {})
    assert [e.detail for e in caught.value.exclusions] == ["unsupported: tools"]


def test_fan_out_reads_the_prompt_once_per_call_native_n_once() -> None:
    catalog = make_catalog([deployment("native-a", features=["n"]), deployment("fan-b", features=[])])
    plan = build_plan(ask("x" * 400, n=3, max_tokens=100), catalog, {})
    cost = {c.deployment: c.estimated_cost_usd for c in plan.candidates}
    prompt = plan.prompt_tokens_estimate
    assert cost["native-a"] == pytest.approx((prompt * 1 + 300 * 4) / 1e6)
    assert cost["fan-b"] == pytest.approx((prompt * 3 + 300 * 4) / 1e6)


def test_images_count_in_the_prompt_estimate() -> None:
    text_only = build_plan(ask("What is in this picture?"), make_catalog([deployment("all-a")]), {})
    image = build_plan(with_image(), make_catalog([deployment("all-a")]), {})
    assert image.prompt_tokens_estimate - text_only.prompt_tokens_estimate == 765


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tool_choice": "auto"}, "tool_choice needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice names 'nope', which is not in tools",
        ),
        ({"top_logprobs": 3}, "top_logprobs needs logprobs: true"),
        ({"response_format": {"type": "json_schema"}}, "type 'json_schema' needs 'json_schema'"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 12}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"tools": [WEATHER, WEATHER]}, "each function name must be unique"),
        ({"n": 17}, "n"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ],
)
def test_inconsistent_requests_are_refused_with_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ask(**fields)


def test_tool_messages_must_answer_an_earlier_call() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    good = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    ]
    request = ChatRequest.model_validate({"messages": good, "tools": [WEATHER]})
    assert Feature.TOOLS in request.required_features()
    orphan = [good[0], {"role": "tool", "tool_call_id": "call_9", "content": "?"}]
    with pytest.raises(ValidationError, match=r"messages\.1\.tool_call_id 'call_9' answers no earlier"):
        ChatRequest.model_validate({"messages": orphan})
    with pytest.raises(ValidationError, match="needs 'tool_call_id'"):
        ChatRequest.model_validate({"messages": [good[0], {"role": "tool", "content": "x"}]})


def test_unknown_content_parts_are_refused() -> None:
    parts = [{"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}}]
    with pytest.raises(ValidationError, match=r"messages\.0\.content"):
        ChatRequest.model_validate({"messages": [{"role": "user", "content": parts}]})


def test_output_problem_names_the_path_and_rule() -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "object", "properties": {"price": {"type": "number"}}},
            }
        },
        "required": ["items"],
    }
    assert output_problem(schema, '{"items": [{"price": 1.5}]}') is None
    assert output_problem(schema, '{"items": [{"price": "cheap"}]}') == (
        "the answer does not match the schema at $.items[0].price: 'cheap' is not of type 'number'"
    )
    assert output_problem(schema, '{"items": [') is not None
    assert "not valid JSON" in (output_problem(schema, "Sure! Here is the JSON") or "")
    assert output_problem(schema, "") == "the answer is empty, not JSON"


async def test_n_without_native_support_fans_out_and_merges(make_router: RouterFactory) -> None:
    catalog = make_catalog([deployment("fan-a", features=[], sim={"output_tokens": 10})])
    router = make_router(catalog)
    result = await router.complete(ask(n=3, max_tokens=50))
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert router.sim_world is not None
    assert router.sim_world.stats["fan-a"].admitted == 3
    assert result.usage.output_tokens == 30
    assert result.attempts[-1].cost_usd == pytest.approx(
        (result.usage.input_tokens * 1 + result.usage.output_tokens * 4) / 1e6
    )


async def test_several_answers_are_not_streamed(make_router: RouterFactory) -> None:
    router = make_router(make_catalog([deployment("all-a")]))
    with pytest.raises(InvalidRequestError, match=r"^n: n > 1 cannot be streamed"):
        async for _ in router.stream(ask(n=2)):
            pass
