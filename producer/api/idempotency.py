"""The `Idempotency-Key` header of the POST routes that create work.

A client that did not get an answer (a timeout, a 503, a dropped connection) retries with the same
key and gets the job or batch the first request made, never a second one it would pay for:

    POST /v1/chat/completions   the first request's job: its answer, waited for like the first
    POST /v1/jobs               the first request's job
    POST /v1/batches            the first request's batch

The key is kept per tenant for `ROUTEQ_API_IDEMPOTENCY_RETENTION_S` with a fingerprint of the route
and body; the same key with another body is a 422. It is recorded in the transaction that creates
the batch (`storage/sql/idempotency.py`), so two racing requests make one batch.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Header

from producer.api.errors import ApiError
from storage.jobs import IdempotencyKey
from storage.settings import Settings

__all__ = ["HEADER", "HEADER_PARAMETER", "IdempotencyKeyHeader", "idempotency_key"]

_MAX_KEY = 255

HEADER = "Idempotency-Key"
_DESCRIPTION = (
    "A key of your choice (e.g. a UUID) per request: a retry with the same key and body "
    "gets the first request's job or batch instead of a new one."
)

IdempotencyKeyHeader = Annotated[str | None, Header(alias=HEADER, description=_DESCRIPTION)]

# The header's OpenAPI entry, as FastAPI writes it for `IdempotencyKeyHeader`: for a route that reads
# the header itself (`request.headers`) and declares it with `openapi_extra`.
HEADER_PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "schema": {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": _DESCRIPTION,
        "title": HEADER,
    },
    "description": _DESCRIPTION,
}


def idempotency_key(header: str | None, route: str, body: Any, settings: Settings) -> IdempotencyKey | None:
    """The key of this request (None without the header); `body` is the request as JSON values."""
    if header is None:
        return None
    key = header.strip()
    if not key or len(key) > _MAX_KEY or not key.isprintable():
        raise ApiError(
            400,
            f"Idempotency-Key: 1 to {_MAX_KEY} printable characters, such as a UUID",
            param="Idempotency-Key",
            code="invalid_request",
        )
    canonical = json.dumps({"route": route, "body": body}, sort_keys=True, separators=(",", ":"))
    return IdempotencyKey(
        key=key,
        fingerprint=hashlib.sha256(canonical.encode()).hexdigest(),
        not_before=datetime.now(UTC) - timedelta(seconds=settings.api_idempotency_retention_s),
    )
