"""Keys limited to allowed models (`routeq keys create/limit --allow-model`): checked where a request
enters, carried with the job.

A request naming a model, deployment or `preferences.chain` entry the key may not use is a 403
`model_not_allowed` naming it and the allowed list (a Batch API line: that line's error, with its
number); one setting a field none of its allowed deployments honours is a 400 naming the field.
Every request of such a key carries the key's patterns as `preferences.allowed_models`, so `auto`
and every strategy route among the allowed deployments only: the planner excludes the others
(`not_allowed`, "not allowed for this key") in the worker's plan and in `POST /v1/route`'s, and a
worker never calls one. `GET /v1/models` lists what the key may name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from producer.api.errors import ApiError
from producer.inputs import BatchItem, LineError, ParsedInput
from router_core.catalog import Catalog
from router_core.models import ChatRequest
from router_core.policy import allowed_names, disallowed_model, unhonoured_field, with_allowed_models

if TYPE_CHECKING:
    from producer.api.auth import Principal

__all__ = ["allowed_lines", "allowed_request", "visible_models"]


def _refusal(field: str, name: str, patterns: tuple[str, ...]) -> str:
    allowed = ", ".join(patterns) or "none"
    return f"{field} {name!r} is not allowed for this API key (allowed models: {allowed})"


def allowed_request(request: ChatRequest, principal: Principal, catalog: Catalog) -> ChatRequest:
    """`request` limited to the key's allowed models; a 403 `model_not_allowed` when it names another."""
    patterns = principal.allowed_models
    if patterns is None:
        return request
    refused = disallowed_model(request, patterns, catalog)
    if refused is not None:
        raise ApiError(
            403,
            _refusal(*refused, patterns),
            type_="permission_error",
            param=refused[0],
            code="model_not_allowed",
        )
    unhonoured = unhonoured_field(request, patterns, catalog)
    if unhonoured is not None:
        field, why = unhonoured
        raise ApiError(400, f"{field}: {why}", param=field, code="invalid_request")
    return with_allowed_models(request, patterns)


def allowed_lines(parsed: ParsedInput, principal: Principal, catalog: Catalog) -> ParsedInput:
    """A batch file's lines under the key: a line naming a model the key may not use becomes that
    line's error; the others carry the key's allowed models."""
    patterns = principal.allowed_models
    if patterns is None:
        return parsed
    items: list[BatchItem] = []
    errors = list(parsed.errors)
    for item in parsed.items:
        refused = disallowed_model(item.request, patterns, catalog)
        unhonoured = None if refused is not None else unhonoured_field(item.request, patterns, catalog)
        if refused is not None:
            errors.append(LineError(item.line, _refusal(*refused, patterns), item.custom_id))
        elif unhonoured is not None:
            errors.append(LineError(item.line, ": ".join(unhonoured), item.custom_id))
        else:
            items.append(BatchItem(item.line, item.custom_id, with_allowed_models(item.request, patterns)))
    errors.sort(key=lambda error: error.line)
    return ParsedInput(items, errors)


def visible_models(names: list[str], principal: Principal, catalog: Catalog) -> list[str]:
    """The names of `GET /v1/models` the key may send: `auto` and `router:<strategy>` (they route
    among its allowed deployments) and the allowed deployment ids and model names."""
    if principal.allowed_models is None:
        return names
    allowed = allowed_names(principal.allowed_models, catalog)
    return [name for name in names if name == "auto" or name.startswith("router:") or name in allowed]
