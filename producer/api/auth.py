"""Who is calling: an API key (`Authorization: Bearer rq-...`) bound to a tenant and user.

Only the key's SHA-256 is looked up (storage.sql.api_keys; each server keeps the active keys it
looked up until any key changes: storage.fleet.key_cache); the secret is never logged or stored. In dev
mode (`ROUTEQ_API_DEV_MODE=true`, turned on by `routeq run --serve` only) there are no keys: every
request acts as the configured tenant/user with admin and operator rights.

Two kinds of rights: an admin key administers its own tenant; an operator key (`routeq keys create
--operator`) acts on the whole fleet: every tenant's analytics, forcing deployments up or down for
everyone. A tenant's admin is not the fleet's operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producer.api.context import ApiContext, Ctx
from producer.api.errors import ApiError
from storage.fleet.ratelimits import UNLIMITED, RateLimits
from storage.settings import Settings
from storage.sql.api_keys import ApiKey

__all__ = [
    "BEARER_SECURITY",
    "Admin",
    "Caller",
    "Operator",
    "Principal",
    "admin",
    "caller",
    "dev_principal",
    "operator",
    "principal_of",
    "request_caller",
]

_bearer = HTTPBearer(auto_error=False, description="An API key made with `routeq keys create`.")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: everything it reads or writes is within `tenant`."""

    tenant: str
    user: str
    admin: bool  # administers `tenant`
    key_id: str | None  # None in dev mode
    operator: bool = False  # acts on the whole fleet, every tenant
    limits: RateLimits = UNLIMITED  # the key's own rate limits (producer/api/ratelimit.py)
    allowed_models: tuple[str, ...] | None = None  # None: every model (producer/api/key_models.py)


def principal_of(key: ApiKey) -> Principal:
    """The principal an active API key stands for (the API's Bearer keys and the dashboard's sessions)."""
    return Principal(
        key.tenant,
        key.user_id,
        key.admin,
        key.id,
        operator=key.operator,
        limits=key.limits,
        allowed_models=key.allowed_models,
    )


def dev_principal(settings: Settings) -> Principal:
    """Dev mode's principal: the configured tenant/user, with admin and operator rights."""
    return Principal(settings.tenant, settings.user, admin=True, key_id=None, operator=True)


async def caller(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The request's principal; 401 without a valid key (unless in dev mode). The key comes as
    `Authorization: Bearer` (OpenAI clients) or `x-api-key` (Anthropic clients)."""
    return await _principal(request, ctx, credentials)


async def request_caller(request: Request) -> tuple[Principal, ApiContext]:
    """`caller` and the app's context, read without FastAPI's dependency solving.

    For the busiest route (chat completions): solving its caller, context and header as
    dependencies took about a tenth of the API's CPU a request. The route declares the bearer
    scheme in its OpenAPI entry itself (`BEARER_SECURITY`).
    """
    ctx: ApiContext = request.app.state.ctx
    return await _principal(request, ctx, await _bearer(request)), ctx


# What a route that calls `request_caller` says of its security in the OpenAPI document, as
# FastAPI writes it for a route depending on `caller`.
BEARER_SECURITY: list[dict[str, list[str]]] = [{"HTTPBearer": []}]


async def _principal(
    request: Request, ctx: ApiContext, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    if ctx.settings.api_dev_mode:
        return dev_principal(ctx.settings)
    secret = credentials.credentials if credentials is not None else request.headers.get("x-api-key")
    if not secret:
        raise ApiError(
            401,
            "missing API key: send `Authorization: Bearer <key>` (make one with `routeq keys create`)",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = await ctx.keys.authenticate(secret)  # kept between requests until a key changes
    if key is None:
        raise ApiError(
            401,
            "invalid API key: it is unknown or revoked",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = principal_of(key)
    request.state.key_id = key.id  # for access logs: the key's id, never its secret
    return principal


async def admin(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    """The principal, if it holds an admin key; 403 otherwise."""
    if not principal.admin:
        raise ApiError(403, "this route needs an admin key (`routeq keys create --admin`)", code="not_admin")
    return principal


async def operator(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    """The principal, if it holds an operator key (the whole fleet); 403 otherwise."""
    if not principal.operator:
        raise ApiError(
            403,
            "this route acts on the whole fleet and needs an operator key (`routeq keys create --operator`); "
            "an admin key administers its own tenant only",
            code="not_operator",
        )
    return principal


Caller = Annotated[Principal, Depends(caller)]
# `?tenant=`: another tenant than the key's (operator keys only; `acting_tenant` checks).
TenantParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=255,
        pattern=r"^[^\x00-\x1f\x7f]+$",  # no control characters: PostgreSQL's text holds no NUL
        description="Another tenant (operator keys only); default: the key's.",
    ),
]
Admin = Annotated[Principal, Depends(admin)]
Operator = Annotated[Principal, Depends(operator)]


def acting_tenant(principal: Principal, tenant: str | None, *, changing: str | None = None) -> str:
    """The tenant a request acts on: the key's own, or (operator keys only) the one it names. With
    `changing` (what the request changes, e.g. "the tenant's cache"), the key must also be an admin
    or operator key; 403 otherwise."""
    if tenant is not None and tenant != principal.tenant:
        if not principal.operator:
            raise ApiError(
                403,
                "tenant: naming another tenant needs an operator key (`routeq keys create --operator`)",
                param="tenant",
                code="not_operator",
            )
        return tenant
    if changing is not None and not (principal.admin or principal.operator):
        raise ApiError(
            403, f"changing {changing} needs an admin key (`routeq keys create --admin`)", code="not_admin"
        )
    return principal.tenant


def tenant_or_all(principal: Principal, tenant: str | None, all_tenants: bool) -> str | None:
    """The tenant a fleet-wide read covers: every one (None) with `all_tenants`, which takes an
    operator key (a tenant's admin key reads its own only; 403 otherwise), else `acting_tenant`."""
    if not all_tenants:
        return acting_tenant(principal, tenant)
    if not principal.operator:
        raise ApiError(
            403,
            "all_tenants needs an operator key (`routeq keys create --operator`); an admin key reads "
            "its own tenant",
            param="all_tenants",
            code="not_operator",
        )
    return None
