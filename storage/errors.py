"""Errors of the storage layer (SQL and Redis), part of routeq's one exception tree.

RouteqError (router_core.errors)
└── StorageError
    ├── ServiceUnavailableError   Redis or the database cannot be reached; names the URL
    ├── NotFoundError             no job or batch with that id
    ├── CatalogConflictError      a catalog change made against a version that is no longer the newest
    └── IdempotencyKeyReusedError an idempotency key sent again with a different request
"""

from __future__ import annotations

from router_core.errors import RouteqError
from router_core.redact import mask_url

__all__ = [
    "CatalogConflictError",
    "IdempotencyKeyReusedError",
    "NotFoundError",
    "ServiceUnavailableError",
    "StorageError",
]


class StorageError(RouteqError):
    """Base class of storage errors."""


class ServiceUnavailableError(StorageError):
    """A connection to Redis or the database failed. The message names the URL (password masked)."""

    def __init__(self, service: str, url: str, cause: BaseException | str, hint: str) -> None:
        self.service = service
        self.url = mask_url(url)
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


class IdempotencyKeyReusedError(StorageError):
    """The tenant already used this idempotency key for a different request (route or body)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"Idempotency-Key {key!r} was already used for a different request (another route or "
            "body); send a new key for a new request, or the same body to get the first answer"
        )


class CatalogConflictError(StorageError):
    """Someone committed a catalog version since the one this change was made against."""

    def __init__(self, expected: int, newest: int) -> None:
        self.expected = expected
        self.newest = newest
        super().__init__(
            f"the catalog changed: this change was made against version {expected}, the newest is "
            f"{newest}; read the catalog again and re-apply the change"
        )
