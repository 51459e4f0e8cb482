"""What a succeeded job's answer looks like everywhere it is shown: every choice as OpenAI shapes it
(tool calls, refusals, logprobs), usage with reasoning tokens, the request's user and metadata; and
the one text choice of a result stored before routeq kept choices."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from producer.api.jobs import job_view
from producer.outputs import completion_body, metadata_filter, output_line
from router_core.chat import Choice
from storage.jobs import JobRecord, JobStatus

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
}
LOGPROBS = {
    "content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}],
    "refusal": None,
}
CHOICES = [
    Choice(
        index=0,
        message={"role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None},
        finish_reason="tool_calls",
    ),
    Choice(
        index=1,
        message={"role": "assistant", "content": "Hi", "refusal": None},
        finish_reason="stop",
        logprobs=LOGPROBS,
    ),
    Choice(
        index=2,
        message={"role": "assistant", "content": None, "refusal": "I can't help with that."},
        finish_reason="stop",
    ),
]
USAGE = {"input_tokens": 12, "output_tokens": 40, "reasoning_tokens": 25, "cache_read_tokens": 0}


def job(result: dict[str, Any] | None, **fields: Any) -> JobRecord:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    values: dict[str, Any] = dict(
        id="job_1", batch_id="batch_1", seq=0, custom_id="q1", tenant="t", user_id="u",
        status=JobStatus.SUCCEEDED, request={}, stream=False, run=1, starts=1, worker="w",
        deployment="fast-b", model="fast-b-model",
        cost_usd=Decimal("0.001"), latency_ms=12.0, attempt_count=1, failovers=0, result=result, error=None,
        created_at=now, started_at=now, finished_at=now,
    )  # fmt: skip
    return JobRecord(**values | fields)


def stored(choices: list[Choice], usage: dict[str, int] = USAGE) -> dict[str, Any]:
    """`jobs.result` as the runner stores it: CompletionResult without its attempts."""
    return {
        "content": choices[0].text,
        "finish_reason": choices[0].finish_reason,
        "choices": [c.model_dump(mode="json") for c in choices],
        "model": "fast-b-model",
        "provider": "fast",
        "usage": usage,
        "simulated": True,
    }


def test_every_choice_is_in_the_completion_as_openai_shapes_it() -> None:
    body = completion_body(job(stored(CHOICES)))
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None},
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Hi", "refusal": None},
            "logprobs": LOGPROBS,
            "finish_reason": "stop",
        },
        {
            "index": 2,
            "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            "logprobs": None,
            "finish_reason": "stop",
        },
    ]
    assert body["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 40,
        "total_tokens": 52,
        "completion_tokens_details": {"reasoning_tokens": 25},
    }


def test_the_openai_sdk_reads_the_completion() -> None:
    from openai.types.chat import ChatCompletion  # noqa: PLC0415

    completion = ChatCompletion.model_validate(completion_body(job(stored(CHOICES))))
    call = completion.choices[0].message.tool_calls
    assert call is not None
    assert call[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert completion.choices[1].logprobs is not None
    assert completion.choices[2].message.refusal == "I can't help with that."
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 25


def test_usage_without_reasoning_has_no_details() -> None:
    usage = completion_body(job(stored(CHOICES[1:2], {"input_tokens": 3, "output_tokens": 4})))["usage"]
    assert usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_a_result_stored_without_choices_is_one_text_choice() -> None:
    older = {"content": "Hello", "finish_reason": "length", "usage": {"input_tokens": 1, "output_tokens": 2}}
    assert completion_body(job(older))["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert completion_body(job({"content": "Hi"}))["choices"][0]["finish_reason"] == "stop"
    assert job_view(job(older))["result"]["choices"][0]["message"]["content"] == "Hello"


def test_the_job_view_and_the_output_line_show_choices_user_and_metadata() -> None:
    record = job(stored(CHOICES), end_user="end-7", metadata={"team": "search"})
    view = job_view(record)
    assert (view["user"], view["metadata"]) == ("end-7", {"team": "search"})
    assert view["result"]["choices"] == completion_body(record)["choices"]
    assert view["result"]["content"] == ""  # the first choice called a tool: no text
    line = output_line(record)
    assert line["response"]["body"]["choices"] == view["result"]["choices"]
    assert (line["routeq"]["user"], line["routeq"]["metadata"]) == ("end-7", {"team": "search"})
    failed = job(None, status=JobStatus.FAILED, error={"type": "NoRouteError", "message": "m"}, end_user="e")
    assert job_view(failed)["result"] is None
    assert output_line(failed)["routeq"]["user"] == "e"


def test_metadata_filters_split_at_the_first_equals_sign() -> None:
    assert metadata_filter(["team=search", "q=a=b", "empty=", "=v"]) == {
        "team": "search",
        "q": "a=b",
        "empty": "",
        "": "v",
    }
    assert metadata_filter(["team=a", "team=a"]) == {"team": "a"}
    with pytest.raises(ValueError, match="is not <key>=<value>"):
        metadata_filter(["team"])
    with pytest.raises(ValueError, match="given twice"):
        metadata_filter(["team=a", "team=b"])
