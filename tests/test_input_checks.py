"""What a request must satisfy beyond its shape, checked where it enters, by line and field.

Size limits (text, messages, line length), finite numbers only (NaN, Infinity and 1e999 pass JSON but
not PostgreSQL), and a model or fallback chain the catalog knows: each bad line is listed with its
number and field while the other lines run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from producer.inputs import (
    BatchItem,
    InputRules,
    LineError,
    parse_chat_body,
    parse_line,
    parse_lines,
    read_jsonl,
)
from router_core.catalog import load_catalog
from router_core.limits import DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_PROMPT_BYTES, RequestLimits
from router_core.models import ChatRequest, Preferences
from storage.settings import Settings
from tests.conftest import deployment, make_catalog

DEMO = load_catalog()
SMALL = InputRules(RequestLimits(max_prompt_bytes=100, max_messages=3), max_line_bytes=2_000)


def short(**fields: Any) -> str:
    return json.dumps({"prompt": "Hello", **fields})


def openai(body: dict[str, Any]) -> str:
    body = {"messages": [{"role": "user", "content": "Hello"}], **body}
    return json.dumps({"custom_id": "r", "method": "POST", "url": "/v1/chat/completions", "body": body})


DEFAULTS = InputRules()


def reason(text: str, rules: InputRules = DEFAULTS) -> str:
    result = parse_line(text, 7, rules)
    assert isinstance(result, LineError), result
    assert result.line == 7
    return result.reason


# --- sizes ------------------------------------------------------------------------------------------


def test_a_prompt_over_the_default_limit_is_refused_by_field() -> None:
    big = "x" * (DEFAULT_MAX_PROMPT_BYTES + 1)
    assert reason(short(prompt=big)).startswith(
        f"prompt: the messages' text is {DEFAULT_MAX_PROMPT_BYTES + 1} bytes; the limit is"
    )
    assert "ROUTEQ_MAX_PROMPT_BYTES" in reason(short(prompt=big))
    body = {"messages": [{"role": "user", "content": big}]}
    assert reason(openai(body)).startswith("body.messages: the messages' text is")
    assert isinstance(parse_line(short(prompt="x" * DEFAULT_MAX_PROMPT_BYTES), 1), BatchItem)


def test_text_is_counted_in_utf8_bytes_across_messages_and_parts() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "é" * 30},  # 60 bytes
        {"role": "user", "content": [{"type": "text", "text": "x" * 41}]},
    ]
    assert reason(json.dumps({"messages": messages}), SMALL).startswith(
        "messages: the messages' text is 101 bytes"
    )
    messages[1]["content"] = [{"type": "text", "text": "x" * 40}]
    assert isinstance(parse_line(json.dumps({"messages": messages}), 1, SMALL), BatchItem)


def test_too_many_messages() -> None:
    messages = [{"role": "user", "content": "hi"}] * 4
    assert reason(json.dumps({"messages": messages}), SMALL) == (
        "messages: 4 messages; the limit is 3 (ROUTEQ_MAX_MESSAGES)"
    )


def test_a_line_over_the_limit_is_refused_and_the_rest_run(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    huge = short(prompt="y" * 5_000)
    path.write_text("\n".join([short(custom_id="a"), huge, short(custom_id="c")]) + "\n")
    parsed = read_jsonl(path, SMALL)
    assert [i.custom_id for i in parsed.items] == ["a", "c"]
    assert [str(e) for e in parsed.errors] == [
        "line 2: line is longer than 2000 bytes (ROUTEQ_MAX_LINE_BYTES): "
        "shorten the request or raise the limit"
    ]


def test_the_default_line_limit_holds_for_a_file(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    with path.open("w") as file:
        file.write(short(custom_id="a") + "\n")
        file.write('{"prompt": "' + "z" * (DEFAULT_MAX_LINE_BYTES + 10) + '"}\r\n')
        file.write(short(custom_id="c") + "\r\n")
    parsed = read_jsonl(path)
    assert [i.line for i in parsed.items] == [1, 3]
    assert [e.line for e in parsed.errors] == [2]
    assert "ROUTEQ_MAX_LINE_BYTES" in parsed.errors[0].reason


def test_a_line_exactly_at_the_limit_is_read(tmp_path: Path) -> None:
    line = short(prompt="w" * 40)
    rules = InputRules(max_line_bytes=len(line))
    path = tmp_path / "in.jsonl"
    path.write_bytes((line + "\r\n" + line.replace("Hello", "x") + "\n").encode())
    parsed = read_jsonl(path, rules)
    assert not parsed.errors
    assert len(parsed.items) == 2


def test_settings_carry_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEQ_MAX_PROMPT_BYTES", "500")
    monkeypatch.setenv("ROUTEQ_MAX_MESSAGES", "7")
    monkeypatch.setenv("ROUTEQ_MAX_LINE_BYTES", "9000")
    rules = InputRules.from_settings(Settings(), DEMO)
    assert rules == InputRules(RequestLimits(500, 7), 9000, DEMO)


def test_the_chat_body_check_applies_the_limits() -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "x" * 101}]}
    request, problems = parse_chat_body(body, RequestLimits(max_prompt_bytes=100))
    assert request is None
    assert problems[0].startswith("messages: the messages' text is 101 bytes")


# --- finite numbers ----------------------------------------------------------------------------------

NON_FINITE = ["1e999", "-1e999", "Infinity", "-Infinity", "NaN"]


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(
    ("template", "field"),
    [
        ('{{"prompt": "hi", "preferences": {{"timeout_ms": {n}}}}}', "preferences.timeout_ms"),
        ('{{"prompt": "hi", "preferences": {{"weights": {{"cost": {n}}}}}}}', "preferences.weights.cost"),
        ('{{"prompt": "hi", "temperature": {n}}}', "temperature"),
        ('{{"messages": [{{"role": "user", "content": "hi", "x": {n}}}]}}', "messages.0.x"),
        (
            '{{"custom_id": "r", "method": "POST", "url": "/v1/chat/completions", '
            '"body": {{"messages": [{{"role": "user", "content": [{{"type": "text", "text": "hi", '
            '"w": [{n}]}}]}}], "preferences": {{"max_cost_per_request": 1}}}}}}',
            "body.messages.0.content.0.w.0",
        ),
    ],
)
def test_non_finite_numbers_are_refused_by_field(number: str, template: str, field: str) -> None:
    assert reason(template.format(n=number)).startswith(f"{field}: not a finite number")


def test_a_non_finite_line_fails_alone() -> None:
    lines = [
        short(custom_id="a"),
        '{"prompt": "b", "preferences": {"timeout_ms": 1e999}}',
        short(custom_id="c"),
    ]
    parsed = parse_lines(lines)
    assert [i.custom_id for i in parsed.items] == ["a", "c"]
    assert parsed.errors[0].line == 2
    assert parsed.errors[0].reason.startswith("preferences.timeout_ms: not a finite number")


def test_an_integer_python_cannot_read_fails_its_line_only() -> None:
    parsed = parse_lines([short(custom_id="a"), '{"prompt": "b", "max_tokens": ' + "9" * 5000 + "}"])
    assert [i.custom_id for i in parsed.items] == ["a"]
    assert parsed.errors[0].line == 2
    assert parsed.errors[0].reason.startswith("not valid JSON: ")


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_the_models_refuse_non_finite_numbers(value: float) -> None:
    """The Python client's own validation: the same refusal without a JSONL line."""
    with pytest.raises(ValidationError, match="timeout_ms"):
        Preferences(timeout_ms=value)
    with pytest.raises(ValidationError, match=r"weights\.cost"):
        ChatRequest.model_validate(
            {"messages": [{"role": "user", "content": "hi"}], "preferences": {"weights": {"cost": value}}}
        )
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": [value]}}}
    with pytest.raises(ValidationError, match=r"x\.0: not a finite number"):
        ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "tools": [tool]})


# --- names the catalog must know -------------------------------------------------------------------


WITH_CATALOG = InputRules(catalog=DEMO)


@pytest.mark.parametrize("model", ["auto", "router:cost", "router:fast", "gpt-4o-mini", next(iter(DEMO))])
def test_models_the_catalog_serves_are_accepted(model: str) -> None:
    assert isinstance(parse_line(short(model=model), 1, WITH_CATALOG), BatchItem)


def test_an_unknown_model_is_refused_by_line_and_field() -> None:
    assert reason(short(model="gpt-nope"), WITH_CATALOG).startswith(
        "model: 'gpt-nope' is neither 'auto', a deployment id nor a model in the catalog"
    )
    assert reason(openai({"model": "gpt-nope"}), WITH_CATALOG).startswith("body.model: 'gpt-nope'")


def test_an_unknown_deployment_in_a_chain_is_refused_by_field() -> None:
    prefs = {"strategy": "fallback_chain", "chain": [next(iter(DEMO)), "nowhere-1"]}
    assert reason(short(preferences=prefs), WITH_CATALOG).startswith(
        "preferences.chain: unknown deployment ids ['nowhere-1']"
    )


def test_without_a_catalog_names_are_left_to_the_router() -> None:
    assert isinstance(parse_line(short(model="gpt-nope"), 1), BatchItem)


# --- fields the catalog must honour ----------------------------------------------------------------

PLAIN_AND_TOOLS = InputRules(
    catalog=make_catalog(
        [deployment("plain-a", features=["temperature"]), deployment("tools-b", features=["tools", "stop"])]
    )
)
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
TOOL = {"type": "function", "function": {"name": "lookup"}}


def test_a_field_some_deployment_honours_is_accepted() -> None:
    assert isinstance(parse_line(openai({"tools": [TOOL], "stop": "END"}), 1, PLAIN_AND_TOOLS), BatchItem)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"response_format": {"type": "json_object"}},
            "body.response_format: no deployment in the catalog honours it "
            "(none has the 'json_object' feature)",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}]},
            "body.messages: no deployment in the catalog honours its image_url parts "
            "(none has the 'vision' feature)",
        ),
        (
            {"logprobs": True, "top_logprobs": 1},
            "body.logprobs: no deployment in the catalog honours it (none has the 'logprobs' feature)",
        ),
        (
            {"seed": 1},
            "body.seed: no deployment in the catalog honours it (none has the 'seed' feature)",
        ),
        (
            {"model": "plain-a", "tools": [TOOL], "preferences": {"allow_fallbacks": False}},
            "body.tools: model 'plain-a' cannot honour it: it has no 'tools' feature "
            "and preferences.allow_fallbacks is false",
        ),
    ],
)
def test_a_field_no_usable_deployment_honours_is_refused_by_line_and_field(
    body: dict[str, Any], expected: str
) -> None:
    assert str(parse_line(openai(body), 7, PLAIN_AND_TOOLS)) == f"line 7: {expected}"


def test_the_short_form_names_the_field_without_a_prefix() -> None:
    assert reason(short(seed=3), PLAIN_AND_TOOLS).startswith("seed: no deployment in the catalog honours it")
