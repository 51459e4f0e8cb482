"""Dashboard sessions: signing in with an API key, the session cookie, CSRF and Origin checks.

    POST /ui/login (api_key)  ->  routeq:ui:session:<sha256(cookie)> = {key_id, csrf}, TTL
                                  cookie routeq_session (HttpOnly, SameSite=Strict, Path=/ui)
    every page                ->  the session is read from Redis and its key looked up again in SQL:
                                  a revoked key signs its sessions out on their next request
    every POST                ->  its Origin (or Referer) must be this host, and its csrf_token the
                                  session's

Sessions live in Redis so that any API process of the fleet accepts them. Redis holds the hash of
the cookie, never the cookie itself, and the key's id, never its secret. In dev mode
(`ROUTEQ_API_DEV_MODE`) nobody signs in: every page acts as the dev principal, and forms carry a
token made once per app.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from redis.asyncio import Redis

from producer.api.auth import Principal, dev_principal, principal_of
from producer.api.context import ApiContext, Ctx
from storage import keys
from storage.connections import as_text

__all__ = [
    "COOKIE",
    "Forbidden",
    "Session",
    "SignInRequired",
    "UiSession",
    "checked_form",
    "create_session",
    "delete_session",
    "same_origin",
    "ui_session",
]

COOKIE = "routeq_session"


class SignInRequired(Exception):
    """The page needs a signed-in session; the dashboard answers 303 to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class Forbidden(Exception):
    """A refused request (a bad CSRF token, a foreign Origin, a missing right): a 403 page saying why."""


@dataclass(frozen=True, slots=True)
class Session:
    """Who is looking at the dashboard, and the token its forms must carry."""

    principal: Principal
    csrf: str
    token: str | None  # the cookie; None in dev mode (no sign-in)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_session(redis: Redis, key_id: str) -> tuple[str, str]:
    """A new session for the key: (cookie token, CSRF token)."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    record = json.dumps({"key_id": key_id, "csrf": csrf})
    await redis.set(keys.ui_session(_hash(token)), record, ex=keys.UI_SESSION_TTL_S)
    return token, csrf


async def delete_session(redis: Redis, token: str) -> None:
    await redis.delete(keys.ui_session(_hash(token)))


async def _signed_in(ctx: ApiContext, token: str) -> Session | None:
    raw = await ctx.redis.get(keys.ui_session(_hash(token)))
    if raw is None:
        return None
    record = json.loads(as_text(raw))
    key = await ctx.store.api_keys.active(str(record["key_id"]))
    if key is None:  # revoked since: the session ends with it
        await delete_session(ctx.redis, token)
        return None
    return Session(principal_of(key), str(record["csrf"]), token)


def _dev_csrf(request: Request) -> str:
    """Dev mode's form token: made once per app, so a page another site serves cannot know it."""
    state = request.app.state
    token: str | None = getattr(state, "ui_dev_csrf", None)
    if token is None:
        token = state.ui_dev_csrf = secrets.token_urlsafe(32)
    return token


async def ui_session(request: Request, ctx: Ctx) -> Session:
    """The request's session (a FastAPI dependency); `SignInRequired` without a valid one."""
    if ctx.settings.api_dev_mode:
        return Session(dev_principal(ctx.settings), _dev_csrf(request), None)
    token = request.cookies.get(COOKIE)
    session = None if not token else await _signed_in(ctx, token)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    return session


def same_origin(request: Request) -> bool:
    """Whether the request comes from a page of this host: its Origin, else its Referer, names this
    host (a request with neither, which browsers send only from outside any page, passes)."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return True
    return urlsplit(claimed).netloc.lower() == request.headers.get("host", "").lower()


async def checked_form(request: Request, session: Annotated[Session, Depends(ui_session)]) -> Session:
    """The session of a state-changing form (a FastAPI dependency): `Forbidden` unless it came from
    this host and carries the session's CSRF token."""
    if not same_origin(request):
        raise Forbidden("this form was sent from another site (its Origin is not this host)")
    form = await request.form()
    sent = form.get("csrf_token")
    if not isinstance(sent, str) or not hmac.compare_digest(sent, session.csrf):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")
    return session


UiSession = Annotated[Session, Depends(ui_session)]
