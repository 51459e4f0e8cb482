"""Errors of the HTTP API, all in the OpenAI error shape: `{"error": {message, type, param, code}}`.

Every failure a client can cause is a 4xx naming what is wrong: a body field (400), a missing or
bad key (401), a budget refusal (402), an admin route without admin rights (403), an unknown or
foreign id (404; another tenant's ids are 404 too, so they do not leak), an oversize upload (413),
an Idempotency-Key reused for a different request (422).
Only infrastructure answers 5xx: Redis or the database unreachable (503, naming which, password
masked), a job that outlived the wait (504), every provider failing (502). A database that refuses
a request's data (SQLSTATE class 22 or 23) is answering, so that is 400, never 503: input is
validated before it is stored, and this is the backstop for a value that check missed. Once a
request made a job, its errors name it too (`x-routeq-job-id` and `error.job_id`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from producer._reasons import field_problems
from storage.errors import IdempotencyKeyReusedError, NotFoundError, ServiceUnavailableError
from storage.jobs import FailureCode

__all__ = [
    "FAILURE_STATUS",
    "INFRASTRUCTURE_ERRORS",
    "ApiError",
    "error_body",
    "first_field",
    "install_error_handlers",
    "unavailable",
]

logger = logging.getLogger("routeq.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
}


# The HTTP status of a job that did not succeed, by its failure code: 4xx where the client can fix
# it, 5xx where routeq or the providers failed. Every code has its row (a test checks).
FAILURE_STATUS: dict[FailureCode, int] = {
    FailureCode.BUDGET_EXCEEDED: 402,
    FailureCode.NO_ROUTE: 400,
    FailureCode.INVALID_REQUEST: 400,
    FailureCode.CANCELLED: 409,
    FailureCode.ALL_ATTEMPTS_FAILED: 502,
    FailureCode.STREAM_INTERRUPTED: 502,
    FailureCode.MAX_TRIES_EXCEEDED: 502,
    FailureCode.BATCH_EXPIRED: 502,
    FailureCode.ROUTING_FAILED: 502,
    FailureCode.UNKNOWN: 502,
    FailureCode.JOB_TIMEOUT: 504,
}


class ApiError(Exception):
    """An error answer: HTTP status, a message saying what to change, and the field if one is at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _TYPES.get(status, "api_error")
        # Once a request made a job, every answer names it (header and body), errors too: a client
        # that retries can look the job up instead of paying for another.
        self.job_id = job_id
        self.headers = dict(headers or {})
        if job_id is not None:
            self.headers.setdefault("x-routeq-job-id", job_id)

    def response(self) -> JSONResponse:
        body = error_body(self.message, type_=self.type, param=self.param, code=self.code)
        if self.job_id is not None:
            body["error"]["job_id"] = self.job_id
        return JSONResponse(body, status_code=self.status, headers=self.headers or None)


def error_body(
    message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def first_field(problems: str) -> str | None:
    """The field the first of `"<field>: <problem>; ..."` names, for the error's `param`."""
    head = problems.split(";", 1)[0]
    if ":" not in head:
        return None
    field = head.split(":", 1)[0].strip()
    return field if field and " " not in field else None


def _not_found_answer(kind: str, id_: str) -> ApiError:
    """The 404 for an id that does not exist, or belongs to another tenant (the same answer).

    Routes raise `NotFoundError`; this handler is the one place it becomes an answer.
    """
    return ApiError(404, f"no {kind} with id {id_!r}", param=kind.replace(" ", "_") + "_id", code="not_found")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        where, parts = parts[0], parts[1:]
        return ".".join(parts) if where == "body" else f"{where} parameter " + ".".join(parts)
    return ".".join(parts)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    body = [
        {**e, "loc": tuple(e.get("loc", ()))[1:]} for e in errors if tuple(e.get("loc", ()))[:1] == ("body",)
    ]
    problems: list[str] = []
    first: str | None = None
    if body and isinstance(exc.body, dict | list):
        # Paths as in the body sent, without pydantic's union tags, as batch lines name them.
        problems = field_problems(body, exc.body)
        first = first_field(problems[0])
        errors = [e for e in errors if tuple(e.get("loc", ()))[:1] != ("body",)]
    for error in errors:
        field = _field(tuple(error.get("loc", ())))
        first = first or field
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{field}: {message}" if field else message)
    message = "; ".join(dict.fromkeys(problems)) or "the request is not valid"
    return ApiError(400, message, param=first, code="invalid_request").response()


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotFoundError)
    return _not_found_answer(exc.kind, exc.id).response()


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()


# What a route catches, once it made a job, to answer 503 naming that job (`unavailable`).
INFRASTRUCTURE_ERRORS = (ServiceUnavailableError, RedisError, SQLAlchemyError, ConnectionError)


def unavailable(exc: Exception, *, job_id: str | None = None) -> ApiError:
    """The 503 for Redis or the database failing; with the job id when the request already made one."""
    if isinstance(exc, ServiceUnavailableError):
        message = str(exc)
    else:
        service = "Redis" if isinstance(exc, RedisError) else "the database"
        message = f"{service} is not answering ({type(exc).__name__}); try again shortly"
    if job_id is not None:
        message += (
            f". Job {job_id} was created and may still run: GET /v1/jobs/{job_id}, or retry with the "
            "same Idempotency-Key"
        )
    return ApiError(503, message, type_="service_unavailable", code="service_unavailable", job_id=job_id)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    answer = unavailable(exc)
    logger.warning("%s %s: %s", request.method, request.url.path, answer.message)
    return answer.response()


async def _key_reused(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotencyKeyReusedError)
    return ApiError(422, str(exc), param="Idempotency-Key", code="idempotency_key_reused").response()


def _refused_data(exc: SQLAlchemyError) -> bool:
    """Whether the database answered and refused the data (SQLSTATE class 22 data exception or
    23 integrity violation), as opposed to not answering. PostgreSQL's errors arrive through asyncpg
    as a plain DBAPIError, so the SQLSTATE decides, not only the class."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    state = getattr(exc.orig, "sqlstate", None) if isinstance(exc, DBAPIError) else None
    return isinstance(state, str) and state[:2] in {"22", "23"}


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SQLAlchemyError)
    if not _refused_data(exc):
        return await _unavailable(request, exc)
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    cause = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    logger.warning("%s %s: the database refused the data: %s", request.method, request.url.path, cause)
    message = f"the database refused this request's data ({cause}); change the request"
    return ApiError(400, message, code="invalid_request").response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(IdempotencyKeyReusedError, _key_reused)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # SQLAlchemyError has its own handler below: a refusal of the request's data is a 400.
    for infra in (ServiceUnavailableError, RedisError, ConnectionError):
        app.add_exception_handler(infra, _unavailable)
    app.add_exception_handler(SQLAlchemyError, _database_error)
