"""Errors of the storage layer (SQL and Redis), part of routeq's one exception tree.

RouteqError (router_core.errors)
└── StorageError
    ├── ServiceUnavailableError   Redis or the database cannot be reached; names the URL
    └── NotFoundError             no job or batch with that id
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from router_core.errors import RouteqError

__all__ = ["NotFoundError", "ServiceUnavailableError", "StorageError", "mask_dsn"]


class StorageError(RouteqError):
    """Base class of storage errors."""


class ServiceUnavailableError(StorageError):
    """A connection to Redis or the database failed. The message names the URL (password masked)."""

    def __init__(self, service: str, url: str, cause: BaseException | str, hint: str) -> None:
        self.service = service
        self.url = mask_dsn(url)
        reason = cause if isinstance(cause, str) else (str(cause) or type(cause).__name__)
        reason = reason.strip().rstrip(".")
        super().__init__(f"cannot reach {service} at {self.url}: {reason}. {hint}")

    @classmethod
    def redis_unset(cls, hint: str) -> ServiceUnavailableError:
        """The error of a command that needs the fleet's Redis when ROUTEQ_REDIS_URL is not set."""
        return cls("Redis", "(unset)", "ROUTEQ_REDIS_URL is not set", hint)


class NotFoundError(StorageError):
    """No job or batch has the given id."""

    def __init__(self, kind: str, id_: str) -> None:
        self.kind = kind
        self.id = id_
        super().__init__(f"no {kind} with id {id_!r}")


def mask_dsn(url: str) -> str:
    """`url` with its password replaced by `***` (redis://:pw@h, postgresql+asyncpg://u:pw@h/db)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
