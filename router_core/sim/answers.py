"""What the sim answers to a request: text, a tool call or JSON, per choice, with tokens and logprobs.

Pure and deterministic: the same request (and seed) gives the same answer. `compose` decides, per
choice:

- a **tool call** when tools are given, `tool_choice` allows calls and the last turn is not a tool
  result (`required` / `any` / a named tool force a call even then): the forced tool, else the one
  whose name and description share most words with the prompt (ties: the first); its arguments are
  a compact JSON instance of the tool's schema (`schema_gen`), varied by the seed and the choice;
- else **JSON** when the request asked for it: an instance of the `json_schema`, or
  `{"answer": "<text>"}` for `json_object`;
- else **text** (`profiles.synth_text`), echoing the prompt's words, or the tool result's words
  when the last turn answered a tool call.

Reasoning (OpenAI `reasoning_effort` other than "none"; Anthropic `thinking` other than
"disabled", at `output_config.effort`, default "high") spends `REASONING_TOKENS[effort]` tokens
first, capped by a thinking budget; `max_tokens` caps reasoning + visible tokens together, so a
small cap leaves a visible answer cut short ("length") or empty. Stop sequences then cut the text
before the first one found.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from router_core.sim.profiles import synth_text
from router_core.sim.schema_gen import schema_instance, stable_salt
from router_core.sim.wire import ToolSpec, WireRequest

__all__ = [
    "REASONING_TOKENS",
    "Answer",
    "Choice",
    "Finish",
    "ToolCall",
    "break_json",
    "breaks_json",
    "chosen_tool",
    "compose",
    "token_logprobs",
]

REASONING_TOKENS: dict[str, int] = {
    "minimal": 16,
    "low": 64,
    "medium": 256,
    "high": 1_024,
    "xhigh": 2_048,
    "max": 4_096,
}
"""Reasoning tokens spent per effort level (before the `max_tokens` cap and a thinking budget)."""

Finish = Literal["stop", "length", "tool_calls", "stop_sequence"]

_CHARS_PER_TOKEN = 4
_SHORT_WORD = 3  # words this short are left out of generated JSON values when longer ones exist
_JSON_ANSWER_OVERHEAD = 3  # tokens of `{"answer":"` and `"}` around the text of a json_object answer
_TOOL_WORD = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# Alternatives offered in `top_logprobs`, after the chosen token itself.
_ALTERNATIVES = (
    " the", " a", ",", ".", " and", " to", " of", " in", " is", " it",
    "\n", " that", " for", " on", " with", " as", " was", " at", " by", " be",
)  # fmt: skip


@dataclass(slots=True)
class ToolCall:
    """One call of a function tool.

    Attributes:
        id: `call_...` (OpenAI) or `toolu_...` (Anthropic).
        name: The tool's name.
        arguments: The arguments as compact JSON text (cut short when max_tokens stopped it).
        input: The arguments as a value (Anthropic `input`); `{}` when they were cut.
    """

    id: str
    name: str
    arguments: str
    input: Any


@dataclass(slots=True)
class Choice:
    """One answer among the request's `n`.

    Attributes:
        index: Its index.
        text: The text content, or None for a tool call.
        tool_call: The tool call, or None for text.
        tokens: Visible completion tokens (text, or the call's arguments).
        reasoning_tokens: Reasoning tokens spent before it (also billed as completion tokens).
        finish: Why it ended; `replies` maps it to the dialect's reason.
        stop_sequence: The stop sequence that cut it, if one did.
        logprobs: OpenAI `logprobs.content` entries, when asked (text answers only).
    """

    index: int
    text: str | None
    tool_call: ToolCall | None
    tokens: int
    reasoning_tokens: int
    finish: Finish
    stop_sequence: str | None = None
    logprobs: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class Answer:
    """The choices of one response.

    `Answer`, `Choice` and `ToolCall` are read-only by convention (not frozen: they are built for
    every request, and frozen dataclasses are slower to build).
    """

    choices: tuple[Choice, ...]

    @property
    def completion_tokens(self) -> int:
        """Visible plus reasoning tokens of every choice, as usage reports them."""
        return sum(c.tokens + c.reasoning_tokens for c in self.choices)

    @property
    def reasoning_tokens(self) -> int:
        """Reasoning tokens of every choice."""
        return sum(c.reasoning_tokens for c in self.choices)


def _count(text: str) -> int:
    """Tokens of a text by the sim's rule (4 characters a token); 0 for an empty text."""
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def _tool_words(tool: ToolSpec) -> set[str]:
    spaced = _CAMEL.sub(" ", tool.name).replace("_", " ").replace("-", " ")
    return set(_TOOL_WORD.findall(f"{spaced} {tool.description}".lower()))


def chosen_tool(req: WireRequest) -> ToolSpec | None:
    """The tool the answer calls, or None when the answer is text (or JSON)."""
    if not req.tools or req.tool_choice == "none":
        return None
    if req.forced_tool is not None:
        return next(tool for tool in req.tools if tool.name == req.forced_tool)
    if req.tool_choice == "auto" and req.tool_result_words is not None:
        return None
    prompt = {word for raw in req.prompt_words for word in _TOOL_WORD.findall(raw)}
    best, best_score = req.tools[0], -1
    for tool in req.tools:
        score = len(prompt & _tool_words(tool))
        if score > best_score:
            best, best_score = tool, score
    return best


def breaks_json(req: WireRequest) -> bool:
    """Whether an `invalid_json` fault changes this request's answer (it asked for JSON, gets text)."""
    return req.output_format != "text" and chosen_tool(req) is None


def reasoning_tokens(req: WireRequest) -> int:
    """Reasoning tokens one choice spends before the `max_tokens` cap."""
    if req.dialect == "openai":
        effort = req.reasoning_effort
        return REASONING_TOKENS.get(effort, 0) if effort is not None else 0
    if req.thinking is None or req.thinking == "disabled":
        return 0
    tokens = REASONING_TOKENS[req.reasoning_effort or "high"]
    return min(tokens, req.thinking_budget) if req.thinking_budget is not None else tokens


def token_logprobs(text: str, top: int, salt: int) -> list[dict[str, Any]]:
    """OpenAI `logprobs.content` for `text`: one entry per 4-character token, values <= 0.

    Each entry's `top_logprobs` lists `top` candidates, the chosen token first (it is the most
    likely), then alternatives with strictly lower log probabilities.
    """
    entries: list[dict[str, Any]] = []
    for start in range(0, len(text), _CHARS_PER_TOKEN):
        token = text[start : start + _CHARS_PER_TOKEN]
        logprob = -round((stable_salt(salt, start, token) % 2_000) / 1_000, 4)
        tops: list[dict[str, Any]] = []
        if top:
            tops.append({"token": token, "logprob": logprob, "bytes": list(token.encode())})
            others = (alt for alt in _ALTERNATIVES if alt != token)
            for rank, alt in zip(range(1, top), others, strict=False):
                alt_logprob = round(logprob - 0.75 * rank - 0.25, 4)
                tops.append({"token": alt, "logprob": alt_logprob, "bytes": list(alt.encode())})
        entries.append(
            {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": tops}
        )
    return entries


def break_json(text: str) -> str:
    """`text` (JSON) cut in half, so that it no longer parses."""
    cut = text[: len(text) // 2]
    try:
        json.loads(cut)
    except ValueError:
        return cut
    return "{" + cut  # a scalar whose first half still parses (`42` -> `4`)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    found = [(pos, stop) for stop in stops if (pos := text.find(stop)) >= 0]
    if not found:
        return text, None
    pos, stop = min(found)
    return text[:pos], stop


@dataclass(slots=True)
class _Context:
    req: WireRequest
    deployment: str
    output_tokens: int
    seq: int
    broken: bool


def _content_words(words: tuple[str, ...]) -> tuple[str, ...]:
    """The words worth putting in generated values: "paris", "forecast" rather than "what", "is"."""
    return tuple(word for word in words if len(word) > _SHORT_WORD) or words


def _tool_choice(ctx: _Context, index: int, tool: ToolSpec, reasoning: int, room: int | None) -> Choice:
    req = ctx.req
    words, salt = _content_words(req.prompt_words), stable_salt(req.seed, tool.name, index)
    value = schema_instance(tool.parameters, words=words, salt=salt)
    arguments = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    finish: Finish = "tool_calls"
    if room is not None and _count(arguments) > room:
        arguments, value, finish = arguments[: room * _CHARS_PER_TOKEN], {}, "length"
    prefix = "call_sim" if req.dialect == "openai" else "toolu_sim"
    call = ToolCall(f"{prefix}{ctx.seq:08d}{index:03d}", tool.name, arguments, value)
    return Choice(index, None, call, _count(arguments), reasoning, finish)


def _json_text(ctx: _Context, index: int, words: tuple[str, ...], tokens: int) -> str:
    req = ctx.req
    if req.output_format == "json_schema" and req.output_schema is not None:
        salt = stable_salt(req.seed, "format", index)
        value = schema_instance(req.output_schema, words=_content_words(words), salt=salt)
    else:
        size = max(1, tokens - _JSON_ANSWER_OVERHEAD)
        value = {"answer": synth_text(ctx.deployment, words, size, choice=index)}
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _choice(ctx: _Context, index: int) -> Choice:
    req, natural = ctx.req, ctx.output_tokens
    cap = req.max_tokens
    reasoning = reasoning_tokens(req)
    room: int | None = None
    if cap is not None:
        reasoning = min(reasoning, cap)
        room = cap - reasoning
    tool = chosen_tool(req)
    if tool is not None and room != 0:
        return _tool_choice(ctx, index, tool, reasoning, room)
    words = req.prompt_words if req.tool_result_words is None else (req.tool_result_words or req.prompt_words)
    finish: Finish = "stop"
    if req.output_format != "text":
        text = _json_text(ctx, index, words, natural)
        if room is not None and _count(text) > room:
            text, finish = text[: room * _CHARS_PER_TOKEN], "length"
        elif ctx.broken:
            text = break_json(text)
        tokens = _count(text)
    elif room is not None and room < natural:
        text = synth_text(ctx.deployment, words, room, choice=index) if room else ""
        tokens, finish = room, "length"
    else:
        text, tokens = synth_text(ctx.deployment, words, natural, choice=index), natural
    stop_sequence = None
    if req.stop:
        text, stop_sequence = _cut_at_stop(text, req.stop)
        if stop_sequence is not None:
            tokens, finish = _count(text), "stop_sequence"
    logprobs = None
    if req.logprobs:
        logprobs = token_logprobs(text, req.top_logprobs, stable_salt(req.seed, "logprobs", index))
    return Choice(index, text, None, tokens, reasoning, finish, stop_sequence, logprobs)


def compose(
    req: WireRequest, *, deployment: str, output_tokens: int, seq: int, broken_json: bool = False
) -> Answer:
    """The answer to `req`: `req.n` choices (1 for Anthropic).

    Args:
        req: The parsed request.
        deployment: The deployment answering (shown in synthesized texts).
        output_tokens: The profile's natural answer length in tokens (text answers).
        seq: The world's request number, used in tool-call ids.
        broken_json: Apply an `invalid_json` fault: JSON answers are cut in half.

    Returns:
        The answer.
    """
    if req.n == 1 and _is_plain(req):
        # The common case, kept lean: a benchmark measures plain-text throughput through the sim.
        cap = req.max_tokens
        if cap is not None and cap < output_tokens:
            text = synth_text(deployment, req.prompt_words, cap)
            return Answer((Choice(0, text, None, cap, 0, "length"),))
        text = synth_text(deployment, req.prompt_words, output_tokens)
        return Answer((Choice(0, text, None, output_tokens, 0, "stop"),))
    ctx = _Context(req, deployment, output_tokens, seq, broken_json)
    return Answer(tuple(_choice(ctx, index) for index in range(req.n)))


def _is_plain(req: WireRequest) -> bool:
    """No tools, no format, no stop, logprobs, reasoning or tool result: just text."""
    return (
        not req.tools
        and req.output_format == "text"
        and not req.stop
        and not req.logprobs
        and req.tool_result_words is None
        and req.reasoning_effort is None
        and req.thinking is None
    )
