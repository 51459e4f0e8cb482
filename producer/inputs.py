"""Read a JSONL batch of chat prompts into validated requests and line-numbered errors.

Each non-blank line is one JSON object in one of two formats:

* **OpenAI Batch format**: ``{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions",
  "body": {...}}``, where ``body`` is a Chat Completions request: ``messages``, ``model``, and every
  other field of the language routeq models (``max_tokens`` / ``max_completion_tokens``,
  ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, penalties, ``logit_bias``, ``logprobs`` /
  ``top_logprobs``, ``tools`` / ``tool_choice`` / ``parallel_tool_calls``, ``response_format``,
  ``reasoning_effort``, ``service_tier``, ``user``, ``metadata``), plus routeq's ``preferences``.
  ``store`` is accepted and ignored (it asks OpenAI to keep the answer; routeq keeps every job);
  ``stream`` must be false.
* **Short form**: ``{"custom_id"?, "prompt" | "messages", "system"?, "preferences"?}`` plus the
  same request fields as a body (``model``, ``max_tokens``, ``temperature``, ``tools``...); a
  missing ``custom_id`` becomes ``line-<n>``.

A line with ``body``, ``method`` or ``url`` is read as the OpenAI format, any other object as the
short form. A model of the form ``router:<strategy>`` (``router:cost``, ``router:fast``...) means
model ``auto`` with that routing strategy, unless ``preferences.strategy`` says otherwise
(`producer.chat_body` turns a body into request fields).

A bad line never stops the rest: it becomes a `LineError` with its 1-based line number and every
problem found on it, each naming its field (``line 7: body.tools.0.function.name: ...``), and the
good lines still run. Blank lines are the only lines skipped.

What a line must satisfy besides its shape is an `InputRules`: the size limits of a request, the
longest line, and (when given) the catalog its ``model`` and ``preferences.chain`` must name and
whose deployments must honour every field it sets, checked with the planner's own
`check_references`. A value no database stores (NaN, an infinity, NUL, a lone surrogate) is a
problem of its field, so it never reaches SQL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import ValidationError

from producer._reasons import given, join, json_type, show, unstorable_values, validation_problems
from producer.chat_body import (
    CHAT_ONLY,
    REQUEST_FIELDS,
    body_key_problems,
    reference_problem,
    request_payload,
)
from router_core.catalog import Catalog
from router_core.errors import InvalidRequestError
from router_core.limits import DEFAULT_MAX_LINE_BYTES, RequestLimits
from router_core.models import ChatRequest
from router_core.planner import check_references

if TYPE_CHECKING:
    from storage.settings import Settings

__all__ = [
    "DEFAULT_CHUNK_LINES",
    "OPENAI_BATCH_URL",
    "BatchItem",
    "InputRules",
    "LineError",
    "ParsedInput",
    "duplicate_reason",
    "parse_chat_body",
    "parse_chunks",
    "parse_line",
    "parse_lines",
    "parse_object",
    "read_jsonl",
    "read_jsonl_chunks",
    "unstorable_values",
]

OPENAI_BATCH_URL = "/v1/chat/completions"
"""The only ``url`` accepted on OpenAI Batch lines."""

MAX_CUSTOM_ID_LENGTH = 255  # the jobs.custom_id column

_BOM = "\ufeff"
_OPENAI_KEYS = frozenset({"custom_id", "method", "url", "body"})
_OPENAI_MARKERS = ("body", "method", "url")
_SHORT_KEYS = (
    frozenset({"custom_id", "prompt", "messages", "system", "max_tokens", "max_completion_tokens"})
    | {"preferences"}
    | REQUEST_FIELDS
)
_SKIP_CHUNK = 1024 * 1024
DEFAULT_CHUNK_LINES = 2_000
"""Lines parsed (and, by `Client.submit_chunks`, written and queued) per chunk of a streamed file."""


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One valid request from the file.

    Attributes:
        line: 1-based line number in the file.
        custom_id: The line's ``custom_id``, or ``line-<n>`` for a short-form line without one.
        request: The validated request, ready for the router.
    """

    line: int
    custom_id: str
    request: ChatRequest


@dataclass(frozen=True, slots=True)
class LineError:
    """One line that cannot be run, and why.

    Attributes:
        line: 1-based line number in the file.
        reason: Every problem found on the line, joined with "; ".
        custom_id: The line's ``custom_id`` when it had a string one.
    """

    line: int
    reason: str
    custom_id: str | None = None

    def __str__(self) -> str:
        """The error as the user should read it: ``line 7: <reason>``."""
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ParsedInput:
    """Everything read from one file: the valid items and the bad lines, each in line order.

    Attributes:
        items: Requests to run.
        errors: Lines that cannot run, with their reasons.
    """

    items: list[BatchItem] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def lines_read(self) -> int:
        """Non-blank lines seen: every one is either an item or an error."""
        return len(self.items) + len(self.errors)


@dataclass(frozen=True, slots=True)
class InputRules:
    """What a request must satisfy beyond its shape (built from settings by the CLI and the API).

    Attributes:
        limits: The size limits of one request.
        max_line_bytes: The longest line, in UTF-8 bytes; a longer one is refused unread.
        catalog: When given, ``model`` and ``preferences.chain`` must name what it serves.
    """

    limits: RequestLimits = field(default_factory=RequestLimits)
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    catalog: Catalog | None = None

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog | None) -> InputRules:
        """The rules the settings give, checking names against `catalog` when one is given."""
        return cls(settings.request_limits(), settings.max_line_bytes, catalog)


_DEFAULT_RULES = InputRules()


class _BadJSON(ValueError):
    """A line that `json.loads` accepts but that routeq refuses (NaN, duplicate keys)."""


def parse_line(text: str, line: int, rules: InputRules = _DEFAULT_RULES) -> BatchItem | LineError:
    """Parse and validate one line of a JSONL batch.

    Duplicate ``custom_id`` detection needs the whole file and is done by `parse_lines`. A
    short-form line without ``custom_id`` gets ``line-<line>``.

    Args:
        text: The line, with or without its line ending; a UTF-8 BOM is tolerated on line 1.
        line: The line's 1-based number, used in the result and the default ``custom_id``.
        rules: Limits and the catalog the request must fit.

    Returns:
        A `BatchItem` when the line is a valid request, otherwise a `LineError` naming every
        problem found on it.
    """
    text = _clean(text, line)
    too_long = _too_long(text, rules.max_line_bytes)
    if too_long is not None:
        return LineError(line, too_long)
    loaded = _load_object(text)
    if isinstance(loaded, str):
        return LineError(line, loaded)
    data, finite = loaded
    # Only a \\u escape makes a NUL or a lone surrogate (raw ones are refused as JSON or UTF-8).
    return _parse_object(data, line, rules, storable=finite and "\\u" not in text)


def parse_object(
    data: dict[str, Any], line: int = 1, rules: InputRules = _DEFAULT_RULES
) -> BatchItem | LineError:
    """Validate one request object in either line format (`parse_line` after the JSON is read)."""
    return _parse_object(data, line, rules, storable=False)


def _parse_object(
    data: dict[str, Any], line: int, rules: InputRules, *, storable: bool
) -> BatchItem | LineError:
    """`parse_object`; `storable` when the line's text shows it holds no unstorable value."""
    unstorable = [] if storable else list(unstorable_values(data, ""))
    if unstorable:
        custom_id = data.get("custom_id")
        usable_id = (
            custom_id if isinstance(custom_id, str) and not any(unstorable_values(custom_id, "")) else None
        )
        return LineError(line, join(unstorable), usable_id)
    openai = any(key in data for key in _OPENAI_MARKERS)
    custom_id, problems = _custom_id(data, required=openai)
    if openai:
        prefix = "body."
        payload, alias_used = _openai_payload(data, problems)
    else:
        prefix = ""
        payload, alias_used = _short_payload(data, problems)

    request: ChatRequest | None = None
    if payload is not None:
        try:
            request = ChatRequest.model_validate(payload)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, payload, prefix, alias_used))
    if request is not None and not problems:
        text_field = "messages" if openai or "messages" in data else "prompt"
        problems.extend(_rule_problems(request, rules, prefix, text_field))

    if problems or request is None:
        return LineError(line, join(problems or ["not a valid request"]), custom_id)
    return BatchItem(line, custom_id if custom_id is not None else f"line-{line}", request)


def parse_lines(lines: Iterable[str], rules: InputRules = _DEFAULT_RULES) -> ParsedInput:
    """Parse every line of a JSONL batch; blank lines are skipped, nothing else is.

    A ``custom_id`` used again on a later line makes that later line an error; the first one
    stays valid.

    Args:
        lines: The file's lines in order (line endings optional; ``\\r\\n`` is fine).
        rules: Limits and the catalog every request must fit.

    Returns:
        The valid items and the line errors, both in line order.
    """
    result = ParsedInput()
    for chunk in parse_chunks(lines, rules, chunk_lines=DEFAULT_CHUNK_LINES):
        result.items.extend(chunk.items)
        result.errors.extend(chunk.errors)
    return result


def parse_chunks(
    lines: Iterable[str],
    rules: InputRules = _DEFAULT_RULES,
    *,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    part: tuple[int, int] | None = None,
) -> Iterator[ParsedInput]:
    """Parse a JSONL batch `chunk_lines` lines at a time: what `parse_lines` does, in pieces.

    Each chunk holds the items and errors of its own lines only, so a caller that writes each
    chunk away before asking for the next keeps one chunk of requests in memory, whatever the size
    of the file. Duplicate ``custom_id`` detection spans the whole file (a set of the ids seen).
    A chunk may be empty (all its lines blank); the last one may be short. `part` (k, n): only
    chunks k, k + n, k + 2n... (from 0; the other lines are read past), and duplicate ids are the
    caller's to find (`duplicate_reason`, in line order): n processes parsing one file.
    """
    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be at least 1, got {chunk_lines}")
    first_used: dict[str, int] | None = {} if part is None else None
    mine, parts = part or (0, 1)
    chunk = ParsedInput()
    number = 0
    for number, raw in enumerate(lines, start=1):
        ours = (number - 1) // chunk_lines % parts == mine
        if ours and (text := _clean(raw, number)).strip():
            parsed = parse_line(text, number, rules)
            parsed = parsed if first_used is None else _unique(parsed, first_used)
            if isinstance(parsed, BatchItem):
                chunk.items.append(parsed)
            else:
                chunk.errors.append(parsed)
        if number % chunk_lines == 0:
            if ours:
                yield chunk
            chunk = ParsedInput()
    if (number % chunk_lines or number == 0) and max(number - 1, 0) // chunk_lines % parts == mine:
        yield chunk


def duplicate_reason(custom_id: str | None, line: int, first_used: dict[str, int]) -> str | None:
    """Why `line` cannot use `custom_id` (an earlier line of `first_used` did), or None (recorded)."""
    first = line if custom_id is None else first_used.setdefault(custom_id, line)
    return None if first == line else f"duplicate custom_id {show(custom_id)} (first used on line {first})"


def _unique(parsed: BatchItem | LineError, first_used: dict[str, int]) -> BatchItem | LineError:
    """`parsed`, or an error when an earlier line already used its ``custom_id``."""
    reason = duplicate_reason(parsed.custom_id, parsed.line, first_used)
    if reason is None:
        return parsed
    if isinstance(parsed, LineError):
        reason = f"{reason}; {parsed.reason}"
    return LineError(parsed.line, reason, parsed.custom_id)


def read_jsonl(path: str | Path, rules: InputRules = _DEFAULT_RULES) -> ParsedInput:
    """Read and parse a JSONL batch file.

    The file is read as UTF-8, one line per ``\\n`` (``\\r\\n`` works too); a line whose bytes are
    not UTF-8 becomes a `LineError` instead of stopping the file, and so does a line longer than
    ``rules.max_line_bytes``, which is skipped without being held in memory.

    Args:
        path: The JSONL file.
        rules: Limits and the catalog every request must fit.

    Returns:
        The valid items and the line errors, both in line order.

    Raises:
        FileNotFoundError: The file does not exist.
    """
    with Path(path).open("rb") as file:
        return parse_lines(_bounded_lines(file, rules.max_line_bytes), rules)


def read_jsonl_chunks(
    file: BinaryIO,
    rules: InputRules = _DEFAULT_RULES,
    *,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    part: tuple[int, int] | None = None,
) -> Iterator[ParsedInput]:
    """`read_jsonl` of an open binary file, `chunk_lines` lines at a time (`parse_chunks`, `part`).

    The file is read as it is asked for: ``file.tell()`` after a chunk says how far it got.
    """
    lines = _bounded_lines(file, rules.max_line_bytes)
    return parse_chunks(lines, rules, chunk_lines=chunk_lines, part=part)


def _bounded_lines(file: BinaryIO, max_bytes: int) -> Iterator[str]:
    """The file's lines as text; a line over `max_bytes` is cut short (still over the limit, so it
    is refused as too long) and the rest of it is read past in chunks, never whole."""
    # Room for the limit itself, a \r\n ending, and the one byte that proves a line too long.
    room = max_bytes + 3
    while chunk := file.readline(room):
        if len(chunk) == room and not chunk.endswith(b"\n"):
            while (rest := file.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                pass
        yield chunk.decode("utf-8", errors="surrogateescape")


# --- one line -----------------------------------------------------------------------------------


def _clean(text: str, line: int) -> str:
    """Drop the line ending, and the BOM from line 1."""
    text = text.rstrip("\r\n")
    return text.removeprefix(_BOM) if line == 1 else text


def _load_object(text: str) -> tuple[dict[str, Any], bool] | str:
    """The line's JSON object and whether every number in it is finite, or why it is not one."""
    unreadable = _unreadable(text)
    if unreadable is not None:
        return unreadable
    try:
        if text.startswith(_BOM):  # as json.loads, which would make a decoder per line: made once below
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        try:
            data, finite = _FINITE.decode(text), True
        except _NotFinite:
            # NaN and Infinity (and 1e999, which overflows) are read as floats so that
            # `unstorable_values` names the field that holds them.
            data, finite = _ANY_NUMBER.decode(text), False
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} (column {exc.colno})"
    except _BadJSON as exc:
        return str(exc)
    except (RecursionError, ValueError) as exc:  # ValueError: an integer past 4,300 digits
        return f"not valid JSON: {'nested too deeply' if isinstance(exc, RecursionError) else exc}"
    if not isinstance(data, dict):
        return f"expected a JSON object, got {json_type(data)}"
    return data, finite


class _NotFinite(Exception):
    """A number that is not finite: the line is read again, keeping it for its field to be named."""


def _finite_only(text: str) -> float:
    """A JSON number as a float, or `_NotFinite` (NaN, Infinity, or a number past the float range).

    Called for the few non-integer numbers of a line, so that the walk over all of its values
    (`unstorable_values`) is left for the rare line that needs it.
    """
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite
    return value


def _too_long(text: str, max_bytes: int) -> str | None:
    # A UTF-8 character is at most 4 bytes: most lines are decided without encoding them.
    if len(text) * 4 <= max_bytes or len(text.encode("utf-8", errors="surrogatepass")) <= max_bytes:
        return None
    return (
        f"line is longer than {max_bytes} bytes (ROUTEQ_MAX_LINE_BYTES): "
        "shorten the request or raise the limit"
    )


def _unreadable(text: str) -> str | None:
    """Why the line cannot even be parsed as JSON text (blank, or bytes that were not UTF-8)."""
    if not text.strip():
        return "line is blank"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid UTF-8 (column {exc.start + 1})"
    return None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)  # in C; a key given twice is looked for only when the lengths differ
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _BadJSON(f"duplicate key {show(key)} in a JSON object: give each key once")
            seen.add(key)
    return obj


_FINITE, _ANY_NUMBER = (  # shared between threads, as json.loads shares its default decoder
    json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_float=hook, parse_constant=hook)
    for hook in (_finite_only, float)
)


def _rule_problems(request: ChatRequest, rules: InputRules, prefix: str, text_field: str) -> list[str]:
    """The request's size over `rules.limits`, names the catalog does not know, and fields none of
    the deployments it may use honours."""
    problems = [
        f"{prefix}{text_field if name == 'messages' else name}: {message}"
        for name, message in rules.limits.problems(request)
    ]
    if rules.catalog is not None:
        try:
            check_references(request, rules.catalog)  # the planner's own check, at parse time
        except InvalidRequestError as exc:
            field, reason = reference_problem(exc)
            problems.append(f"{prefix}{field}: {reason}" if field else f"{prefix}{reason}")
    return problems


def _custom_id(data: dict[str, Any], *, required: bool) -> tuple[str | None, list[str]]:
    """The line's custom_id when it is a usable string, and the problems with it."""
    if "custom_id" not in data:
        if required:
            return None, ["custom_id is required in the OpenAI batch format"]
        return None, []
    value = data["custom_id"]
    if not isinstance(value, str):
        return None, [f"custom_id must be a string, got {json_type(value)}"]
    if not value.strip():
        return None, ["custom_id is empty"]
    if len(value) > MAX_CUSTOM_ID_LENGTH:
        return None, [f"custom_id is {len(value)} characters long; the limit is {MAX_CUSTOM_ID_LENGTH}"]
    return value, []


def _openai_payload(data: dict[str, Any], problems: list[str]) -> tuple[dict[str, Any] | None, bool]:
    """The ChatRequest fields of an OpenAI Batch line; problems found are appended.

    Returns:
        The payload (None when there is no usable body) and whether ``max_completion_tokens``
        supplied ``max_tokens``.
    """
    problems.extend(f"unknown field {show(key)}" for key in data if key not in _OPENAI_KEYS)
    method = data.get("method")
    if method != "POST":
        problems.append(f"method must be 'POST', got {given(data, 'method')}")
    url = data.get("url")
    if url != OPENAI_BATCH_URL:
        problems.append(f"url must be {show(OPENAI_BATCH_URL)}, got {given(data, 'url')}")
    if "body" not in data:
        problems.append("body is required: the chat completion request as an object")
        return None, False
    body = data["body"]
    if not isinstance(body, dict):
        problems.append(f"body must be an object, got {json_type(body)}")
        return None, False

    payload, alias_used = _body_payload(body, "body.", problems)
    stream = body.get("stream")
    if stream is not None and stream is not False:
        problems.append(f"body.stream must be false, got {show(stream)}: batch requests are not streamed")
    return payload, alias_used


def parse_chat_body(
    body: dict[str, Any], limits: RequestLimits = _DEFAULT_RULES.limits
) -> tuple[ChatRequest | None, list[str]]:
    """Validate the body of `POST /v1/chat/completions` as a routed request.

    The same rules as a batch line's ``body`` (every Chat Completions field, ``router:<strategy>``
    models, ``preferences``, ``max_completion_tokens``, ``store`` ignored, size `limits`), except
    that ``stream`` and ``stream_options`` are the caller's to honour and the catalog is the
    caller's to check (an unknown model is its own answer there).

    Returns:
        The request, or None and every problem found, each naming its field.
    """
    problems = list(unstorable_values(body, ""))
    if problems:
        return None, problems
    payload, alias_used = _body_payload({k: v for k, v in body.items() if k not in CHAT_ONLY}, "", problems)
    request: ChatRequest | None = None
    try:
        request = ChatRequest.model_validate(payload)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, payload, "", alias_used))
    if request is not None and not problems:
        problems.extend(_rule_problems(request, InputRules(limits), "", "messages"))
    return (None, problems) if problems else (request, [])


def _body_payload(body: dict[str, Any], prefix: str, problems: list[str]) -> tuple[dict[str, Any], bool]:
    """The ChatRequest fields of a chat completion body, and whether max_completion_tokens was used."""
    problems.extend(body_key_problems(body, prefix))
    if "messages" not in body:
        problems.append(f"{prefix}messages is required")
    payload, alias_used = request_payload(body, prefix, problems)
    if "messages" in body:
        payload["messages"] = body["messages"]
    return payload, alias_used


def _short_payload(data: dict[str, Any], problems: list[str]) -> tuple[dict[str, Any], bool]:
    """The ChatRequest fields of a short-form line, and whether max_completion_tokens was used;
    problems found are appended."""
    problems.extend(f"unknown field {show(key)}" for key in data if key not in _SHORT_KEYS)
    payload: dict[str, Any] = {}
    has_prompt, has_messages = "prompt" in data, "messages" in data
    if has_prompt and has_messages:
        problems.append("give either 'prompt' or 'messages', not both")
    elif not has_prompt and not has_messages:
        problems.append("missing 'prompt' or 'messages'")
    elif has_messages:
        payload["messages"] = data["messages"]
        if "system" in data:
            problems.append(
                "'system' goes with 'prompt': with 'messages', put the system message in messages"
            )
    else:
        messages = _prompt_messages(data["prompt"], data.get("system"), problems)
        if messages is not None:
            payload["messages"] = messages
    fields, alias_used = request_payload(data, "", problems)
    return payload | fields, alias_used


def _prompt_messages(prompt: Any, system: Any, problems: list[str]) -> list[dict[str, Any]] | None:
    """The messages for a short-form ``prompt`` and optional ``system``, or None if either is bad."""
    found = len(problems)
    if not isinstance(prompt, str):
        problems.append(f"prompt must be a string, got {json_type(prompt)}")
    elif not prompt.strip():
        problems.append("prompt is empty")
    if system is not None and not isinstance(system, str):
        problems.append(f"system must be a string, got {json_type(system)}")
    elif isinstance(system, str) and not system.strip():
        problems.append("system is empty: give it text or leave it out")
    if len(problems) > found:
        return None
    user = {"role": "user", "content": prompt}
    return [{"role": "system", "content": system}, user] if system is not None else [user]
