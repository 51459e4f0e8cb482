"""The optional fields of a chat request: tools, tool choice, output format, n, logprobs, stop, reasoning.

Each dialect has one function that returns the `WireRequest` keyword arguments it found (plus
`extra_prompt_tokens`, the estimated tokens of tool definitions and output schemas), or raises the
`RequestError` the provider would answer with. A plain request has none of these fields, so this
costs it a handful of dictionary lookups. JSON Schemas are checked with `jsonschema`, imported on
the first request that carries one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from router_core.sim.schema_gen import SchemaError, schema_instance
from router_core.tokens import estimate_tokens

__all__ = [
    "OPENAI_REASONING_EFFORTS",
    "ErrorKind",
    "RequestError",
    "ToolSpec",
    "anthropic_options",
    "openai_options",
]

ErrorKind = Literal["invalid_request", "not_found", "rate_limit", "server_error", "context_length"]

OPENAI_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_ANTHROPIC_EFFORTS = ("low", "medium", "high", "xhigh", "max")
_THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")
_MIN_THINKING_BUDGET = 1_024
_MAX_N = 128
_MAX_TOP_LOGPROBS = 20
_MAX_OPENAI_STOPS = 4
_OPENAI_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_ANTHROPIC_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_NO_ARGUMENTS: Mapping[str, Any] = {"type": "object", "properties": {}}


class RequestError(Exception):
    """A request the provider would reject before doing any work (HTTP 4xx)."""

    def __init__(self, message: str, *, kind: ErrorKind = "invalid_request", param: str | None = None):
        """Create the error.

        Args:
            message: Human-readable message placed in the provider's error body.
            kind: Which provider error to render.
            param: The offending request field, reported by OpenAI-shaped bodies.
        """
        super().__init__(message)
        self.message = message
        self.kind: ErrorKind = kind
        self.param = param


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function tool the model may call.

    Attributes:
        name: The tool's name.
        description: Its description ("" when none).
        parameters: The JSON Schema of its arguments (OpenAI `parameters`, Anthropic `input_schema`).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]


def _error(message: str, param: str | None = None) -> RequestError:
    return RequestError(message, param=param)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_schema(schema: object, what: str, param: str) -> Mapping[str, Any]:
    """`schema` if it is a valid JSON Schema object with an instance the sim can build, else a 400.

    The real APIs compile every schema when the request arrives; building one instance here is
    the sim's equivalent, so an unsatisfiable schema is refused before any fault or answer.
    """
    if not isinstance(schema, Mapping):
        raise _error(f"Invalid schema for {what}: expected a JSON Schema object.", param)
    import jsonschema  # noqa: PLC0415  # off the plain path

    try:
        jsonschema.validators.validator_for(schema).check_schema(dict(schema))
        schema_instance(schema)
    except jsonschema.SchemaError as exc:
        raise _error(f"Invalid schema for {what}: {exc.message}", param) from exc
    except SchemaError as exc:
        raise _error(f"Invalid schema for {what}: {exc}", param) from exc
    return schema


def _tokens_of(value: object) -> int:
    return estimate_tokens(json.dumps(value, separators=(",", ":")))


# --- OpenAI --------------------------------------------------------------------------------------


def _openai_tools(tools: object) -> tuple[list[ToolSpec], set[str]]:
    """The function tools, and the names of the custom tools (accepted, never called)."""
    if not isinstance(tools, list):
        raise _error("Invalid type for 'tools': expected an array.", "tools")
    if not tools:
        raise _error("Invalid 'tools': empty array. Expected an array with minimum length 1.", "tools")
    specs: list[ToolSpec] = []
    custom: set[str] = set()
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind == "custom":
            custom.add(str((tool.get("custom") or {}).get("name", "")))
            continue
        if kind != "function":
            param = f"tools[{i}].type"
            raise _error(f"Invalid value for '{param}': supported values are 'function' and 'custom'.", param)
        function = tool.get("function")
        function = function if isinstance(function, Mapping) else {}
        name = function.get("name")
        if not isinstance(name, str) or not _OPENAI_TOOL_NAME.fullmatch(name):
            param = f"tools[{i}].function.name"
            raise _error(f"Invalid '{param}': expected a string matching '^[a-zA-Z0-9_-]{{1,64}}$'.", param)
        parameters = function.get("parameters")
        if parameters is None:
            parameters = _NO_ARGUMENTS
        param = f"tools[{i}].function.parameters"
        _check_schema(parameters, f"function '{name}'", param)
        if parameters.get("type", "object") != "object":
            message = (
                f"Invalid schema for function '{name}': schema must be a JSON Schema of 'type: \"object\"'."
            )
            raise _error(message, param)
        description = function.get("description")
        specs.append(ToolSpec(name, description if isinstance(description, str) else "", parameters))
    return specs, custom


def _openai_tool_choice(
    choice: object, specs: list[ToolSpec], custom: set[str], has_tools: bool
) -> tuple[str, str | None, list[ToolSpec]]:
    """(mode, forced tool, callable tools) of an OpenAI `tool_choice`."""
    if not has_tools:
        raise _error(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            "tool_choice",
        )
    names = {spec.name for spec in specs}
    if isinstance(choice, str) and choice in ("none", "auto", "required"):
        return choice, None, specs
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind == "function" and isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise _error(
                f"Invalid value for 'tool_choice': no function named {name!r} in 'tools'.", "tool_choice"
            )
        return "required", name, specs
    if kind == "custom" and isinstance(choice, Mapping):
        name = (choice.get("custom") or {}).get("name")
        known = "it is a custom tool, which the simulator never calls" if name in custom else "no such tool"
        raise _error(f"Invalid value for 'tool_choice': cannot force {name!r}: {known}.", "tool_choice")
    if kind == "allowed_tools" and isinstance(choice, Mapping):
        allowed = choice.get("allowed_tools")
        mode = allowed.get("mode") if isinstance(allowed, Mapping) else None
        listed = allowed.get("tools") if isinstance(allowed, Mapping) else None
        if mode not in ("auto", "required") or not isinstance(listed, list):
            raise _error("Invalid value for 'tool_choice.allowed_tools'.", "tool_choice.allowed_tools")
        keep: set[str] = set()
        for entry in listed:
            entry_kind = entry.get("type") if isinstance(entry, Mapping) else None
            name = (
                (entry.get(entry_kind) or {}).get("name")
                if isinstance(entry, Mapping) and entry_kind
                else None
            )
            if name not in names and name not in custom:
                param = "tool_choice.allowed_tools.tools"
                raise _error(f"Invalid value for '{param}': no tool named {name!r} in 'tools'.", param)
            keep.add(str(name))
        return str(mode), None, [spec for spec in specs if spec.name in keep]
    raise _error("Invalid value for 'tool_choice'.", "tool_choice")


def _openai_format(fmt: object, texts: Sequence[str], out: dict[str, Any]) -> None:
    fmt = fmt if isinstance(fmt, Mapping) else {}
    kind = fmt.get("type")
    if kind == "text":
        return
    if kind == "json_object":
        if not any("json" in text.lower() for text in texts):
            raise _error(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                "'json_object'.",
                "messages",
            )
        out["output_format"] = "json_object"
        return
    if kind != "json_schema":
        raise _error(
            "Invalid value for 'response_format.type': supported values are 'text', 'json_object' and "
            "'json_schema'.",
            "response_format.type",
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, Mapping):
        raise _error(
            "Missing required parameter: 'response_format.json_schema'.", "response_format.json_schema"
        )
    if not isinstance(spec.get("name"), str):
        param = "response_format.json_schema.name"
        raise _error(f"Missing required parameter: '{param}'.", param)
    out["output_format"] = "json_schema"
    if spec.get("schema") is not None:
        param = "response_format.json_schema.schema"
        out["output_schema"] = _check_schema(spec["schema"], f"response_format '{spec['name']}'", param)
        out["extra_prompt_tokens"] = out.get("extra_prompt_tokens", 0) + _tokens_of(spec["schema"])


def _openai_sampling(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None:
        if not _is_int(n) or not 1 <= n <= _MAX_N:
            raise _error(f"Invalid 'n': expected an integer from 1 to {_MAX_N}, but got {n!r} instead.", "n")
        out["n"] = n
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _error("Invalid type for 'logprobs': expected a boolean.", "logprobs")
    if logprobs:
        out["logprobs"] = True
    if top is not None:
        if not _is_int(top) or not 0 <= top <= _MAX_TOP_LOGPROBS:
            raise _error(
                f"Invalid 'top_logprobs': expected an integer from 0 to {_MAX_TOP_LOGPROBS}.", "top_logprobs"
            )
        if logprobs is not True:
            raise _error(
                "Invalid value for 'top_logprobs': 'logprobs' must be true to use it.", "top_logprobs"
            )
        out["top_logprobs"] = top


def _openai_extras(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise _error("Invalid type for 'seed': expected an integer.", "seed")
        out["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _error("Invalid type for 'stop': expected a string or an array of strings.", "stop")
        if len(stops) > _MAX_OPENAI_STOPS:
            raise _error(f"Invalid 'stop': expected at most {_MAX_OPENAI_STOPS} sequences.", "stop")
        out["stop"] = tuple(s for s in stops if s)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in OPENAI_REASONING_EFFORTS:
            allowed = ", ".join(repr(e) for e in OPENAI_REASONING_EFFORTS)
            raise _error(
                f"Invalid value for 'reasoning_effort': supported values are {allowed}.", "reasoning_effort"
            )
        out["reasoning_effort"] = effort


def openai_options(body: Mapping[str, Any], texts: Sequence[str], max_tokens: int | None) -> dict[str, Any]:
    """The optional fields of an OpenAI Chat Completions body.

    Args:
        body: The request's JSON object.
        texts: The messages' texts (a `json_object` format needs the word "json" in one).
        max_tokens: The completion cap (unused for OpenAI).

    Returns:
        `WireRequest` keyword arguments, plus `extra_prompt_tokens`.
    """
    out: dict[str, Any] = {}
    tools = body.get("tools")
    specs: list[ToolSpec] = []
    custom: set[str] = set()
    if tools is not None:
        specs, custom = _openai_tools(tools)
        out["extra_prompt_tokens"] = _tokens_of(tools)
    choice = body.get("tool_choice")
    if choice is not None:
        mode, forced, specs = _openai_tool_choice(choice, specs, custom, bool(tools))
        out["tool_choice"], out["forced_tool"] = mode, forced
    if specs:
        out["tools"] = tuple(specs)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise _error("Invalid type for 'parallel_tool_calls': expected a boolean.", "parallel_tool_calls")
        out["parallel_tool_calls"] = parallel
    fmt = body.get("response_format")
    if fmt is not None:
        _openai_format(fmt, texts, out)
    _openai_sampling(body, out)
    _openai_extras(body, out)
    return out


# --- Anthropic -----------------------------------------------------------------------------------


def _anthropic_tools(tools: object) -> tuple[list[ToolSpec], set[str]]:
    """The custom (client) tools, and the names of server tools (accepted, never called)."""
    if not isinstance(tools, list):
        raise _error("tools: Input should be a valid list")
    specs: list[ToolSpec] = []
    server: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise _error(f"tools.{i}: Input should be a valid dictionary")
        name = tool.get("name")
        if tool.get("type") not in (None, "custom"):
            server.add(str(name))
            continue
        if not isinstance(name, str) or not _ANTHROPIC_TOOL_NAME.fullmatch(name):
            raise _error(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, Mapping):
            raise _error(f"tools.{i}.custom.input_schema: Field required")
        if schema.get("type") != "object":
            raise _error(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        _check_schema(schema, f"tool '{name}'", f"tools.{i}.custom.input_schema")
        description = tool.get("description")
        specs.append(ToolSpec(name, description if isinstance(description, str) else "", schema))
    return specs, server


def _anthropic_tool_choice(
    choice: object, specs: list[ToolSpec], server: set[str], has_tools: bool
) -> tuple[str, str | None, bool]:
    """(mode, forced tool, parallel calls allowed) of an Anthropic `tool_choice`."""
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind not in ("auto", "any", "none", "tool") or not isinstance(choice, Mapping):
        raise _error("tool_choice: Input tag does not match any of 'auto', 'any', 'tool', 'none'")
    if kind in ("any", "tool") and not has_tools:
        raise _error(f"tool_choice: `tool_choice.type` {kind!r} requires `tools` to be provided")
    disable = choice.get("disable_parallel_tool_use", False)
    if not isinstance(disable, bool):
        raise _error("tool_choice.disable_parallel_tool_use: Input should be a valid boolean")
    if kind == "tool":
        name = choice.get("name")
        if name in server:
            raise _error(f"tool_choice.name: cannot force {name!r}: the simulator never calls server tools")
        if name not in {spec.name for spec in specs}:
            raise _error(f"tool_choice.name: Tool {name!r} not found in `tools`")
        return "required", str(name), not disable
    return {"auto": "auto", "any": "required", "none": "none"}[kind], None, not disable


def _anthropic_output(config: object, out: dict[str, Any]) -> None:
    if not isinstance(config, Mapping):
        raise _error("output_config: Input should be a valid dictionary")
    effort = config.get("effort")
    if effort is not None:
        if effort not in _ANTHROPIC_EFFORTS:
            raise _error("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
        out["reasoning_effort"] = effort
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema":
        raise _error("output_config.format.type: Input should be 'json_schema'")
    schema = _check_schema(fmt.get("schema"), "output_config.format", "output_config.format.schema")
    out["output_format"], out["output_schema"] = "json_schema", schema
    out["extra_prompt_tokens"] = out.get("extra_prompt_tokens", 0) + _tokens_of(schema)


def _anthropic_thinking(thinking: object, max_tokens: int | None, out: dict[str, Any]) -> None:
    kind = thinking.get("type") if isinstance(thinking, Mapping) else None
    if kind not in _THINKING_TYPES or not isinstance(thinking, Mapping):
        raise _error(
            "thinking: Input tag does not match 'enabled', 'disabled', 'adaptive' or 'between_tools'"
        )
    out["thinking"] = kind
    if kind != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not _is_int(budget) or budget < _MIN_THINKING_BUDGET:
        raise _error(
            f"thinking.enabled.budget_tokens: Input should be greater than or equal to {_MIN_THINKING_BUDGET}"
        )
    if max_tokens is not None and max_tokens <= budget:
        raise _error("`max_tokens` must be greater than `thinking.budget_tokens`")
    out["thinking_budget"] = budget


def anthropic_options(
    body: Mapping[str, Any], texts: Sequence[str], max_tokens: int | None
) -> dict[str, Any]:
    """The optional fields of an Anthropic Messages body.

    Args:
        body: The request's JSON object.
        texts: The messages' texts (unused for Anthropic).
        max_tokens: The completion cap, which a thinking budget must stay under.

    Returns:
        `WireRequest` keyword arguments, plus `extra_prompt_tokens`.
    """
    out: dict[str, Any] = {}
    tools = body.get("tools")
    specs: list[ToolSpec] = []
    server: set[str] = set()
    if tools is not None:
        specs, server = _anthropic_tools(tools)
        out["extra_prompt_tokens"] = _tokens_of(tools)
    choice = body.get("tool_choice")
    if choice is not None:
        mode, forced, parallel = _anthropic_tool_choice(choice, specs, server, bool(tools))
        out["tool_choice"], out["forced_tool"], out["parallel_tool_calls"] = mode, forced, parallel
    if specs:
        out["tools"] = tuple(specs)
    config = body.get("output_config")
    if config is not None:
        _anthropic_output(config, out)
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _error("stop_sequences: Input should be a valid list of strings")
        out["stop"] = tuple(s for s in stops if s)
    thinking = body.get("thinking")
    if thinking is not None:
        _anthropic_thinking(thinking, max_tokens, out)
    return out
