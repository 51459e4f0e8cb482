"""API keys of the HTTP API: each bound to a tenant and user, some with admin or operator rights.

An admin key administers its own tenant; an operator key acts on the whole fleet (every tenant's
analytics, forcing deployments). The two are separate: an admin is never an operator by being one.

A key is `rq-` followed by 43 URL-safe random characters (256 bits). Only its SHA-256 is stored:
a secret with that much entropy needs no slow hash, and a database dump reveals no usable key.
The secret is shown once, when the key is made (`routeq keys create`); afterwards a key is known
by its id (`key_...`) and the secret's first characters (`prefix`), which are safe to show and log.

A key may be limited to allowed models (`allowed_models`: patterns, `router_core.policy`; None:
every model). A tenant's settings live in `tenant_limits`: its rate limits over all its keys and
its default strategy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, RowMapping, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from router_core.models import Strategy
from storage.errors import NotFoundError
from storage.fleet.ratelimits import UNLIMITED, RateLimits
from storage.jobs import aware, new_id
from storage.sql.database import Database
from storage.sql.schema import api_keys, tenant_limits

__all__ = ["KEY_PREFIX", "ApiKey", "ApiKeys", "hash_secret"]

KEY_PREFIX = "rq-"
_SHOWN_CHARS = 10


def hash_secret(secret: str) -> str:
    """The stored form of a secret: SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored: never the secret itself."""

    id: str
    prefix: str
    tenant: str
    user_id: str
    name: str | None
    admin: bool
    operator: bool
    created_at: datetime
    revoked_at: datetime | None
    limits: RateLimits = UNLIMITED
    allowed_models: tuple[str, ...] | None = None  # None: every model

    @property
    def active(self) -> bool:
        return self.revoked_at is None


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.prefix,
    api_keys.c.tenant,
    api_keys.c.user_id,
    api_keys.c.name,
    api_keys.c.admin,
    api_keys.c.operator,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
    api_keys.c.rpm,
    api_keys.c.tpm,
    api_keys.c.burst,
    api_keys.c.allowed_models,
)
# The lookup of every authenticated request, built once (building it cost more than running it).
_BY_HASH = select(*_COLUMNS, api_keys.c.key_hash).where(api_keys.c.key_hash == bindparam("digest"))
_LIMITS = ("rpm", "tpm", "burst")


def _record(row: RowMapping) -> ApiKey:
    values = {c.name: row[c.name] for c in _COLUMNS if c.name not in _LIMITS}
    values["created_at"] = aware(values["created_at"])
    values["revoked_at"] = aware(values["revoked_at"])
    models = values.pop("allowed_models")
    allowed = None if models is None else tuple(models)
    return ApiKey(**values, limits=RateLimits(*(row[name] for name in _LIMITS)), allowed_models=allowed)


class ApiKeys:
    """Make, look up, list and revoke API keys."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._new_tenant = db.insert_ignoring_duplicates(tenant_limits)
        # Changes of a key (revoke, limits, allowed models) committed through this object: a process's
        # cache of keys (storage.fleet.key_cache) reads them again after one.
        self.changes = 0

    async def create(
        self,
        *,
        tenant: str,
        user_id: str,
        name: str | None = None,
        admin: bool = False,
        operator: bool = False,
        limits: RateLimits = UNLIMITED,
        allowed_models: Sequence[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret; the secret is not stored and cannot be shown again.

        `admin` administers the key's tenant; `operator` acts on the whole fleet (and implies admin).
        `allowed_models` limits the models it may use (None: every one).
        """
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=new_id("key"),
            prefix=secret[:_SHOWN_CHARS],
            tenant=tenant,
            user_id=user_id,
            name=name,
            admin=admin or operator,
            operator=operator,
            created_at=datetime.now(UTC),
            revoked_at=None,
            limits=limits,
            allowed_models=None if allowed_models is None else tuple(allowed_models),
        )
        row = {c.name: getattr(key, c.name) for c in _COLUMNS if c.name not in _LIMITS}
        row["allowed_models"] = None if allowed_models is None else list(allowed_models)
        row |= {"key_hash": hash_secret(secret), **limits.columns()}

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(api_keys.insert(), row)

        await self._db.writes.run(write)
        return key, secret

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, or None."""
        digest = hash_secret(secret)
        async with self._db.reading() as conn:
            row = (await conn.execute(_BY_HASH, {"digest": digest})).first()
        # The lookup is by hash; the constant-time compare guards against a collation surprise.
        if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
            return None
        return _record(row._mapping)

    async def active(self, key_id: str) -> ApiKey | None:
        """The key with this id if it is still active (not revoked), else None: a dashboard session
        holds the key's id, never its secret, and is checked with this on every request."""
        query = select(*_COLUMNS).where(api_keys.c.id == key_id)
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None or row.revoked_at is not None else _record(row._mapping)

    async def list(self, *, tenant: str | None = None) -> list[ApiKey]:
        query = select(*_COLUMNS).order_by(api_keys.c.created_at)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        async with self._db.reading() as conn:
            return [_record(row._mapping) for row in await conn.execute(query)]

    async def set_limits(self, key_id: str, limits: RateLimits) -> ApiKey:
        """Replace a key's rate limits (None: no limit). Raises `NotFoundError`."""
        return await self._change(key_id, limits.columns())

    async def set_allowed_models(self, key_id: str, models: Sequence[str] | None) -> ApiKey:
        """Replace the models a key may use (None: every one). Raises `NotFoundError`."""
        return await self._change(key_id, {"allowed_models": None if models is None else list(models)})

    async def default_strategy(self, tenant: str) -> Strategy | None:
        """The strategy of the tenant's requests that name none (None: the environment's)."""
        query = select(tenant_limits.c.default_strategy).where(tenant_limits.c.tenant == tenant)
        async with self._db.reading() as conn:
            value = (await conn.execute(query)).scalar()
        return None if value is None else Strategy(value)

    async def set_default_strategy(self, tenant: str, strategy: Strategy | None) -> None:
        """Set (None: clear) the tenant's default strategy; its rate limits stay as they are."""
        now = datetime.now(UTC)
        value = None if strategy is None else strategy.value

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(self._new_tenant.values(tenant=tenant, updated_at=now))
            mine = update(tenant_limits).where(tenant_limits.c.tenant == tenant)
            await conn.execute(mine.values(updated_at=now, default_strategy=value))

        await self._db.writes.run(write)

    async def tenant_limits(self, tenant: str) -> RateLimits:
        """The tenant's limits over all its keys (none set: no limit)."""
        query = select(tenant_limits.c.rpm, tenant_limits.c.tpm, tenant_limits.c.burst)
        async with self._db.reading() as conn:
            row = (await conn.execute(query.where(tenant_limits.c.tenant == tenant))).first()
        return RateLimits() if row is None else RateLimits(row.rpm, row.tpm, row.burst)

    async def set_tenant_limits(self, tenant: str, limits: RateLimits) -> None:
        """Replace the tenant's limits (all None: none)."""
        now = datetime.now(UTC)

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(self._new_tenant.values(tenant=tenant, updated_at=now))
            mine = update(tenant_limits).where(tenant_limits.c.tenant == tenant)
            await conn.execute(mine.values(updated_at=now, **limits.columns()))

        await self._db.writes.run(write)

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key by id (its secret stops working at once). Raises `NotFoundError`."""
        revoked = func.coalesce(api_keys.c.revoked_at, datetime.now(UTC))  # the first revocation stays
        return await self._change(key_id, {"revoked_at": revoked})

    async def _change(self, key_id: str, values: Mapping[str, Any]) -> ApiKey:
        """Set columns of one key and return it, counted in `changes`. Raises `NotFoundError`."""
        statement = update(api_keys).where(api_keys.c.id == key_id).values(**values).returning(*_COLUMNS)

        async def write(conn: AsyncConnection) -> Row[Any] | None:
            return (await conn.execute(statement)).first()

        row = await self._db.writes.run(write)
        self.changes += 1
        if row is None:
            raise NotFoundError("API key", key_id)
        return _record(row._mapping)
