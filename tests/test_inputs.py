"""JSONL batch input: both line formats, every error kind with its line number, and the example files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from producer.inputs import BatchItem, LineError, ParsedInput, parse_line, parse_lines, read_jsonl
from router_core.models import Capability, Strategy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
URL = "/v1/chat/completions"


def openai_line(custom_id: str = "req-1", /, **body: Any) -> str:
    """An OpenAI Batch line; `body` defaults to one user message."""
    body.setdefault("messages", [{"role": "user", "content": "Hello there"}])
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL, "body": body})


def item(text: str, line: int = 1) -> BatchItem:
    result = parse_line(text, line)
    assert isinstance(result, BatchItem), result
    return result


def error(text: str, line: int = 1) -> LineError:
    result = parse_line(text, line)
    assert isinstance(result, LineError), result
    return result


# --- valid lines ------------------------------------------------------------------------------------


def test_short_form_prompt_becomes_one_user_message_with_defaults() -> None:
    got = item('{"custom_id": "q-1", "prompt": "What is 2 + 2?"}', line=4)
    assert got.line == 4
    assert got.custom_id == "q-1"
    assert [(m.role, m.content) for m in got.request.messages] == [("user", "What is 2 + 2?")]
    assert got.request.model == "auto"
    assert got.request.max_tokens is None
    assert got.request.preferences.strategy is Strategy.BALANCED


def test_short_form_without_custom_id_is_named_after_its_line() -> None:
    assert item('{"prompt": "hi"}', line=9).custom_id == "line-9"
    parsed = parse_lines(['{"prompt": "a"}', "", '{"prompt": "b"}'])
    assert [i.custom_id for i in parsed.items] == ["line-1", "line-3"]


def test_short_form_system_becomes_a_leading_system_message() -> None:
    got = item('{"system": "Be brief.", "prompt": "Explain DNS."}')
    assert [(m.role, m.content) for m in got.request.messages] == [
        ("system", "Be brief."),
        ("user", "Explain DNS."),
    ]


def test_short_form_with_messages_and_all_optional_fields() -> None:
    line = {
        "custom_id": "chat-7",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "7"},
            {"role": "user", "content": [{"type": "text", "text": "Another?"}]},
        ],
        "model": "gpt-4o-mini",
        "max_tokens": 50,
        "temperature": 0.3,
        "preferences": {"strategy": "cost", "max_cost_per_request": 0.01, "capability": "math"},
    }
    got = item(json.dumps(line))
    assert got.custom_id == "chat-7"
    assert len(got.request.messages) == 4
    assert got.request.messages[3].text() == "Another?"
    assert got.request.model == "gpt-4o-mini"
    assert got.request.max_tokens == 50
    assert got.request.temperature == 0.3
    prefs = got.request.preferences
    assert prefs.strategy is Strategy.COST
    assert prefs.max_cost_per_request == 0.01
    assert prefs.capability is Capability.MATH


def test_openai_batch_line() -> None:
    text = openai_line(
        "code-001",
        model="claude-haiku-4-5",
        messages=[
            {"role": "developer", "content": "Use Python."},
            {"role": "user", "content": "Sort a list"},
        ],
        max_tokens=300,
        temperature=0,
        preferences={"min_quality": 0.8, "capability": "code"},
    )
    got = item(text, line=2)
    assert (got.line, got.custom_id) == (2, "code-001")
    assert got.request.model == "claude-haiku-4-5"
    assert [m.role for m in got.request.messages] == ["developer", "user"]
    assert got.request.max_tokens == 300
    assert got.request.temperature == 0
    assert got.request.preferences.min_quality == 0.8
    assert got.request.preferences.capability is Capability.CODE


def test_openai_batch_body_model_defaults_to_auto() -> None:
    assert item(openai_line()).request.model == "auto"


def test_openai_ignored_body_keys_and_harmless_stream_and_n() -> None:
    text = openai_line(user="u-1", metadata={"team": "a"}, store=False, seed=7, stream=False, n=1)
    got = item(text)
    assert got.request.model == "auto"
    assert item(openai_line(stream=None, n=None)).custom_id == "req-1"


def test_max_completion_tokens_is_an_alias_of_max_tokens() -> None:
    assert item(openai_line(max_completion_tokens=123)).request.max_tokens == 123


@pytest.mark.parametrize(
    ("model", "strategy"),
    [
        ("router:cost", Strategy.COST),
        ("router:quality", Strategy.QUALITY),
        ("router:fast", Strategy.SPEED),
        ("router:accurate", Strategy.QUALITY),
        ("router:least_loaded", Strategy.LEAST_LOADED),
    ],
)
def test_router_model_means_auto_with_that_strategy(model: str, strategy: Strategy) -> None:
    short = item(json.dumps({"prompt": "hi", "model": model})).request
    batch = item(openai_line(model=model)).request
    for request in (short, batch):
        assert request.model == "auto"
        assert request.preferences.strategy is strategy


def test_router_model_keeps_other_preferences_and_explicit_strategy_wins() -> None:
    kept = item(json.dumps({"prompt": "hi", "model": "router:cost", "preferences": {"min_quality": 0.5}}))
    assert kept.request.preferences.strategy is Strategy.COST
    assert kept.request.preferences.min_quality == 0.5
    explicit = item(openai_line(model="router:cost", preferences={"strategy": "quality"}))
    assert explicit.request.model == "auto"
    assert explicit.request.preferences.strategy is Strategy.QUALITY


# --- one error per kind ----------------------------------------------------------------------------


def test_not_json() -> None:
    got = error('{"prompt": "hi" "model": "auto"}', line=7)
    assert got.line == 7
    assert got.reason == "not valid JSON: Expecting ',' delimiter (column 17)"
    assert str(got) == "line 7: not valid JSON: Expecting ',' delimiter (column 17)"
    assert got.custom_id is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1, 2]", "array"), ('"hello"', "string"), ("42", "number"), ("true", "boolean"), ("null", "null")],
)
def test_not_an_object(text: str, kind: str) -> None:
    assert error(text).reason == f"expected a JSON object, got {kind}"


def test_nan_and_duplicate_keys_are_refused() -> None:
    assert error('{"prompt": "x", "temperature": NaN}').reason.startswith("temperature: not a finite number")
    assert "duplicate key 'prompt'" in error('{"prompt": "a", "prompt": "b"}').reason


def test_unknown_top_level_field_in_both_formats() -> None:
    short = error('{"custom_id": "s-1", "prompt": "hi", "temprature": 0.5}')
    assert short.reason == "unknown field 'temprature'"
    assert short.custom_id == "s-1"
    batch = json.loads(openai_line())
    batch["priority"] = "high"
    assert error(json.dumps(batch)).reason == "unknown field 'priority'"


@pytest.mark.parametrize("key", ["functions", "audio", "modalities", "prediction", "stream_options"])
def test_unsupported_body_key(key: str) -> None:
    got = error(openai_line(**{key: 1}))
    assert got.reason == f"body.{key} is not supported: routeq cannot honour it"
    assert got.custom_id == "req-1"


def test_stream_true_is_refused_and_n_is_up_to_16() -> None:
    assert error(openai_line(stream=True)).reason.startswith("body.stream must be false, got true")
    assert item(openai_line(n=2)).request.n == 2
    assert item(openai_line(n=16)).request.n == 16
    assert error(openai_line(n=17)).reason == "body.n: Input should be less than or equal to 16"
    assert error(openai_line(n=0)).reason == "body.n: Input should be greater than or equal to 1"


def test_wrong_method_and_url_say_what_was_given_and_what_is_accepted() -> None:
    line = json.loads(openai_line())
    line["method"] = "GET"
    assert error(json.dumps(line)).reason == "method must be 'POST', got 'GET'"
    line["method"], line["url"] = "POST", "/v1/embeddings"
    reason = error(json.dumps(line)).reason
    assert reason == "url must be '/v1/chat/completions', got '/v1/embeddings'"


def test_openai_line_needs_custom_id_method_url_and_an_object_body() -> None:
    reason = error('{"body": {"messages": [{"role": "user", "content": "hi"}]}}').reason
    assert reason == (
        "custom_id is required in the OpenAI batch format; "
        "method must be 'POST', got nothing; url must be '/v1/chat/completions', got nothing"
    )
    no_body = error(json.dumps({"custom_id": "x", "method": "POST", "url": URL}))
    assert no_body.reason == "body is required: the chat completion request as an object"
    list_body = error(json.dumps({"custom_id": "x", "method": "POST", "url": URL, "body": []}))
    assert list_body.reason == "body must be an object, got array"


def test_missing_messages() -> None:
    assert error('{"custom_id": "m-1"}').reason == "missing 'prompt' or 'messages'"
    batch = json.dumps({"custom_id": "x", "method": "POST", "url": URL, "body": {"model": "auto"}})
    assert error(batch).reason == "body.messages is required"


def test_both_prompt_and_messages() -> None:
    text = '{"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}'
    assert error(text).reason == "give either 'prompt' or 'messages', not both"


def test_system_with_messages_is_an_error() -> None:
    text = '{"system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]}'
    assert "'system' goes with 'prompt'" in error(text).reason


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt(prompt: str) -> None:
    assert error(json.dumps({"prompt": prompt})).reason == "prompt is empty"


def test_prompt_and_system_must_be_strings() -> None:
    assert error('{"prompt": 5}').reason == "prompt must be a string, got number"
    assert error('{"prompt": "hi", "system": ["x"]}').reason == "system must be a string, got array"


def test_messages_without_text_are_refused() -> None:
    reason = error('{"messages": [{"role": "user", "content": "  "}]}').reason
    assert reason.startswith("messages: every message is empty")


def test_invalid_preference_names_the_field_path() -> None:
    strategy = error('{"prompt": "hi", "preferences": {"strategy": "cheapest"}}').reason
    assert strategy.startswith("preferences.strategy: Input should be 'cost', 'speed', 'quality'")
    cost = error('{"prompt": "hi", "preferences": {"max_cost_per_request": -1}}').reason
    assert cost == "preferences.max_cost_per_request: Input should be greater than 0"
    extra = error('{"prompt": "hi", "preferences": {"budget": 1}}').reason
    assert extra == "preferences.budget: Extra inputs are not permitted"


def test_openai_validation_errors_are_prefixed_with_body() -> None:
    role = error(openai_line(messages=[{"role": "robot", "content": "hi"}])).reason
    assert role.startswith("body.messages.0.role: Input should be 'system'")
    prefs = error(openai_line(preferences={"min_quality": 2})).reason
    assert prefs == "body.preferences.min_quality: Input should be less than or equal to 1"


def test_alias_errors_name_the_field_that_was_given() -> None:
    reason = error(openai_line(max_completion_tokens=0)).reason
    assert reason == "body.max_completion_tokens: Input should be greater than 0"
    both = error(openai_line(max_tokens=10, max_completion_tokens=10)).reason
    assert both == "give only one of body.max_tokens and body.max_completion_tokens"


def test_union_errors_collapse_to_one_readable_path() -> None:
    reason = error('{"messages": [{"role": "user", "content": 5}]}').reason
    assert reason.startswith("messages.0.content: Input should be a valid string or ")
    assert "str" not in reason.split(":", maxsplit=1)[0]


def test_several_errors_join_with_semicolons_and_cap_at_three() -> None:
    two = error('{"prompt": "hi", "max_tokens": 0, "temperature": 3}').reason
    assert two == (
        "max_tokens: Input should be greater than 0; temperature: Input should be less than or equal to 2"
    )
    five = error('{"prompt": "hi", "a": 1, "b": 2, "c": 3, "d": 4, "e": 5}').reason
    assert five == "unknown field 'a'; unknown field 'b'; unknown field 'c' (and 2 more)"


def test_unknown_router_strategy_names_the_field() -> None:
    short = error('{"prompt": "hi", "model": "router:cheapest"}').reason
    assert short.startswith("model: unknown strategy 'cheapest' in 'router:cheapest'")
    assert "cost" in short
    batch = error(openai_line(model="router:")).reason
    assert batch.startswith("body.model: unknown strategy ''")


def test_model_must_not_be_empty() -> None:
    assert error('{"prompt": "hi", "model": " "}').reason == "model is empty: leave it out or use 'auto'"
    assert error(openai_line(model="")).reason == "body.model is empty: leave it out or use 'auto'"
    assert item('{"prompt": "hi", "model": null}').request.model == "auto"


def test_custom_id_must_be_a_non_empty_string() -> None:
    number = error('{"custom_id": 12, "prompt": "hi"}')
    assert number.reason == "custom_id must be a string, got number"
    assert number.custom_id is None
    assert error('{"custom_id": null, "prompt": "hi"}').reason == "custom_id must be a string, got null"
    assert error('{"custom_id": " ", "prompt": "hi"}').reason == "custom_id is empty"


# --- whole files ------------------------------------------------------------------------------------


def test_duplicate_custom_id_fails_the_later_line_only() -> None:
    parsed = parse_lines(
        [
            '{"custom_id": "a", "prompt": "one"}',
            '{"custom_id": "b", "prompt": "two"}',
            '{"custom_id": "a", "prompt": "three"}',
            openai_line("b"),
            '{"prompt": "five"}',
            '{"custom_id": "line-5", "prompt": "six"}',
        ]
    )
    assert [(i.line, i.custom_id) for i in parsed.items] == [(1, "a"), (2, "b"), (5, "line-5")]
    assert [(e.line, e.reason, e.custom_id) for e in parsed.errors] == [
        (3, "duplicate custom_id 'a' (first used on line 1)", "a"),
        (4, "duplicate custom_id 'b' (first used on line 2)", "b"),
        (6, "duplicate custom_id 'line-5' (first used on line 5)", "line-5"),
    ]


def test_duplicate_of_a_bad_line_keeps_both_reasons() -> None:
    parsed = parse_lines(['{"custom_id": "a", "prompt": ""}', '{"custom_id": "a", "prompt": ""}'])
    assert [str(e) for e in parsed.errors] == [
        "line 1: prompt is empty",
        "line 2: duplicate custom_id 'a' (first used on line 1); prompt is empty",
    ]


def test_good_lines_around_bad_lines_still_parse() -> None:
    lines = [
        '{"custom_id": "ok-1", "prompt": "first"}',
        "not json at all",
        "",
        openai_line("ok-2"),
        "[]",
        "   ",
        '{"custom_id": "bad-pref", "prompt": "x", "preferences": {"strategy": "cheapest"}}',
        '{"prompt": "last"}',
    ]
    parsed = parse_lines(lines)
    assert isinstance(parsed, ParsedInput)
    assert [(i.line, i.custom_id) for i in parsed.items] == [(1, "ok-1"), (4, "ok-2"), (8, "line-8")]
    assert [(e.line, e.custom_id) for e in parsed.errors] == [(2, None), (5, None), (7, "bad-pref")]
    assert parsed.errors[0].reason == "not valid JSON: Expecting value (column 1)"
    assert parsed.errors[1].reason == "expected a JSON object, got array"
    assert parsed.lines_read == 6


def test_blank_lines_are_skipped_and_empty_input_is_empty() -> None:
    parsed = parse_lines(["\n", "  \t\n", '{"prompt": "hi"}\n', "\r\n"])
    assert [i.line for i in parsed.items] == [3]
    assert parsed.errors == []
    assert parsed.lines_read == 1
    assert parse_lines([]).lines_read == 0
    assert parse_line("   ", 5) == LineError(5, "line is blank")


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"custom_id": "w-1", "prompt": "hi"}\r\n'
        b"\r\n"
        b'{"prompt": "there", "model": "router:cost"}\r\n'
        b'{"prompt" "broken"}\r\n'
    )
    parsed = read_jsonl(path)
    assert [(i.line, i.custom_id) for i in parsed.items] == [(1, "w-1"), (3, "line-3")]
    assert [str(e) for e in parsed.errors] == ["line 4: not valid JSON: Expecting ':' delimiter (column 11)"]
    in_memory = parse_lines(['\ufeff{"prompt": "hi"}\r\n'])
    assert [i.custom_id for i in in_memory.items] == ["line-1"]


def test_bytes_that_are_not_utf8_fail_only_their_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n{"prompt": "ok"}\n')
    parsed = read_jsonl(str(path))
    assert [str(e) for e in parsed.errors] == ["line 1: not valid UTF-8 (column 16)"]
    assert [i.line for i in parsed.items] == [2]


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "nope.jsonl")


# --- example files ----------------------------------------------------------------------------------


def test_demo_file_is_clean_and_varied() -> None:
    parsed = read_jsonl(EXAMPLES / "demo.jsonl")
    assert parsed.errors == []
    assert 180 <= len(parsed.items) <= 220
    ids = [i.custom_id for i in parsed.items]
    assert len(set(ids)) == len(ids)
    raw = [json.loads(line) for line in (EXAMPLES / "demo.jsonl").read_text("utf-8").splitlines()]
    assert len(raw) == len(parsed.items)  # no blank lines in the demo
    openai_lines = sum("body" in obj for obj in raw)
    assert 0.2 <= openai_lines / len(raw) <= 0.4
    assert any("custom_id" not in obj for obj in raw)
    assert any("system" in obj for obj in raw)
    strategies = {i.request.preferences.strategy for i in parsed.items}
    assert {Strategy.BALANCED, Strategy.COST, Strategy.QUALITY, Strategy.SPEED} <= strategies
    pinned = {i.request.model for i in parsed.items} - {"auto"}
    assert pinned <= {"gpt-4o-mini", "claude-haiku-4-5"}
    assert len([i for i in parsed.items if i.request.model != "auto"]) <= 3


def test_with_errors_file_reports_exactly_the_designed_errors() -> None:
    parsed = read_jsonl(EXAMPLES / "with-errors.jsonl")
    assert parsed.lines_read == 12
    assert [i.line for i in parsed.items] == [1, 2, 4, 5, 7, 9, 10, 12]
    assert [(e.line, e.custom_id) for e in parsed.errors] == [
        (3, None),
        (6, "story-001"),
        (8, "compare-001"),
        (11, "empty-001"),
    ]
    reasons = [e.reason for e in parsed.errors]
    assert reasons[0] == "not valid JSON: Expecting ',' delimiter (column 26)"
    assert reasons[1] == "unknown field 'temprature'"
    assert reasons[2].startswith("body.preferences.strategy: Input should be 'cost'")
    assert reasons[3] == "prompt is empty"


def test_overlong_custom_id_is_rejected() -> None:
    parsed = parse_lines([json.dumps({"custom_id": "x" * 256, "prompt": "hi"}), json.dumps({"prompt": "ok"})])
    assert [e.line for e in parsed.errors] == [1]
    assert "256 characters long; the limit is 255" in parsed.errors[0].reason
    assert [item.line for item in parsed.items] == [2]
