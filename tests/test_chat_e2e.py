"""The whole Chat Completions language end to end, through the real openai and anthropic SDKs.

Tool-call round trips on both wire formats, plain and streamed; a json_schema answer that does not
validate is a failed (and billed) attempt, and the job fails over to a deployment whose answer does;
images counted as prompt tokens. The sim answers tool calls with arguments valid for the tool's
schema and JSON valid for the requested schema, deterministically.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from producer.client import Client
from router_core import ChatRequest, Router
from router_core.errors import AllAttemptsFailedError
from router_core.models import AttemptOutcome, CompletionResult
from router_core.providers import sim_world_for
from router_core.providers.base import Delta
from storage.jobs import ANY_TENANT, JobStatus, NewJob
from tests.backends import Backend
from tests.conftest import RouterFactory, deployment, make_catalog

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_PARAMS,
    },
}
REVIEW = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "neutral", "negative"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["sentiment", "score"],
    "additionalProperties": False,
}
QUESTION = {"role": "user", "content": "What is the weather in Lisbon?"}


def catalog_of(kind: str, **sim: Any) -> Any:
    model = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}[kind]
    return make_catalog(
        [deployment(f"{kind}-a", kind=kind, model=model, price=None, sim={"output_tokens": 30, **sim})]
    )


async def answer(router: Router, request: ChatRequest, *, stream: bool) -> tuple[CompletionResult, list[Any]]:
    """The result, and (streamed) every piece relayed before it."""
    if not stream:
        return await router.complete(request), []
    pieces: list[Any] = []
    async for part in router.stream(request):
        if isinstance(part, CompletionResult):
            return part, pieces
        pieces.append(part)
    raise AssertionError("the stream ended without its result")


def streamed_arguments(pieces: list[Any]) -> str:
    """The tool-call arguments as the relayed OpenAI chunk deltas spell them."""
    text = ""
    for piece in pieces:
        if isinstance(piece, Delta):
            for call in piece.choice.get("delta", {}).get("tool_calls") or ():
                text += (call.get("function") or {}).get("arguments") or ""
    return text


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_tool_call_round_trip(make_router: RouterFactory, kind: str, stream: bool) -> None:
    router = make_router(catalog_of(kind))
    first = ChatRequest.model_validate(
        {"messages": [QUESTION], "tools": [WEATHER], "tool_choice": "required"}
    )

    called, pieces = await answer(router, first, stream=stream)
    assert called.finish_reason == "tool_calls"
    message = called.choices[0].message
    [call] = message["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, WEATHER_PARAMS)
    if stream:  # the tool call arrived as OpenAI chunk deltas that add up to the final message
        assert json.loads(streamed_arguments(pieces)) == arguments

    follow_up = ChatRequest.model_validate(
        {
            "messages": [
                QUESTION,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "21 degrees and clear skies"},
            ],
            "tools": [WEATHER],
        }
    )
    final, _ = await answer(router, follow_up, stream=stream)
    assert final.finish_reason == "stop"
    assert final.content
    assert "tool_calls" not in final.choices[0].message or not final.choices[0].message["tool_calls"]
    sent = router.sim_world.last_requests(f"{kind}-a")[-1] if router.sim_world else {}
    # The tool result went over the wire in the provider's own shape.
    if kind == "openai":
        assert sent["messages"][-1] == {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": "21 degrees and clear skies",
        }
    else:
        [block] = sent["messages"][-1]["content"]
        assert block["type"] == "tool_result"
        assert block["tool_use_id"] == call["id"]


def review_request(**prefs: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "Review: the film was wonderful. Rate it."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "review", "schema": REVIEW, "strict": True},
            },
            "preferences": {"strategy": "fallback_chain", "chain": ["broken-a", "good-b"], **prefs},
        }
    )


def invalid_then_valid() -> Any:
    """broken-a (OpenAI wire) answers every JSON request with invalid JSON; good-b (Anthropic) is fine."""
    return make_catalog(
        [
            deployment(
                "broken-a", kind="openai", model="gpt-4o-mini", price=None, sim={"invalid_json_rate": 1.0}
            ),
            deployment("good-b", kind="anthropic", model="claude-haiku-4-5", price=None),
        ]
    )


async def test_an_answer_that_breaks_the_schema_fails_over(make_router: RouterFactory) -> None:
    router = make_router(invalid_then_valid())
    result = await router.complete(review_request())
    assert result.deployment == "good-b"
    jsonschema.validate(json.loads(result.content), REVIEW)
    first, second = result.attempts
    assert (first.deployment, first.outcome) == ("broken-a", AttemptOutcome.INVALID_OUTPUT)
    assert first.error_class == "InvalidOutputError"
    assert first.error is not None
    assert "the answer is not valid JSON" in first.error
    # The provider answered, so it billed: the invalid answer is charged, not retried on broken-a.
    assert first.usage is not None
    assert first.cost_usd > 0
    assert (second.deployment, second.outcome) == ("good-b", AttemptOutcome.SUCCESS)


async def test_the_failover_is_recorded_and_billed_through_the_worker(backend: Backend) -> None:
    catalog = invalid_then_valid()
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch([NewJob("review", review_request())])
    await backend.run_worker(catalog=catalog, sim_world=sim_world_for(catalog))

    [job] = [job async for job in client.results(batch_id)]
    assert job.status == JobStatus.SUCCEEDED
    assert job.deployment == "good-b"
    assert job.failovers == 1
    assert job.result is not None
    jsonschema.validate(json.loads(job.result["choices"][0]["message"]["content"]), REVIEW)
    attempts = await backend.store.jobs.attempts(job.id, tenant=ANY_TENANT)
    assert [(a["deployment"], a["outcome"]) for a in attempts] == [
        ("broken-a", "invalid_output"),
        ("good-b", "success"),
    ]
    assert "not valid JSON" in attempts[0]["error"]
    # Both calls were billed: two ledger rows, and the job's cost is their sum.
    ledger = await backend.store.ledger.rows(batch_id=batch_id)
    assert [row["deployment"] for row in sorted(ledger, key=lambda r: r["attempt_no"])] == [
        "broken-a",
        "good-b",
    ]
    assert float(job.cost_usd or 0) == pytest.approx(float(sum(row["cost_usd"] for row in ledger)))


async def test_when_no_answer_validates_the_job_fails_naming_the_schema_problem(
    make_router: RouterFactory,
) -> None:
    catalog = make_catalog(
        [
            deployment(
                "broken-a", kind="openai", model="gpt-4o-mini", price=None, sim={"invalid_json_rate": 1.0}
            )
        ]
    )
    router = make_router(catalog)
    request = review_request().model_copy(
        update={"preferences": review_request().preferences.model_copy(update={"chain": ["broken-a"]})}
    )
    with pytest.raises(AllAttemptsFailedError, match="not valid JSON") as caught:
        await router.complete(request)
    assert [a.outcome for a in caught.value.attempts] == [AttemptOutcome.INVALID_OUTPUT]


@pytest.mark.parametrize(("kind", "image_tokens"), [("openai", 765), ("anthropic", 1600)])
async def test_images_reach_the_provider_and_count_as_prompt_tokens(
    make_router: RouterFactory, kind: str, image_tokens: int
) -> None:
    router = make_router(catalog_of(kind))
    text = {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}]}
    png = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    url = {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
    plain = await router.complete(ChatRequest.model_validate({"messages": [text]}))
    pictured = await router.complete(
        ChatRequest.model_validate({"messages": [{"role": "user", "content": [*text["content"], png, url]}]})
    )
    assert pictured.usage.input_tokens - plain.usage.input_tokens == 2 * image_tokens
    assert router.sim_world is not None
    sent = router.sim_world.last_requests(f"{kind}-a")[-1]
    if kind == "anthropic":
        sources = [block["source"] for block in sent["messages"][0]["content"] if block["type"] == "image"]
        assert sources == [
            {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
            {"type": "url", "url": "https://example.com/a.jpg"},
        ]
    else:
        assert sent["messages"][0]["content"][1:] == [png, url]
