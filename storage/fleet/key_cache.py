"""API keys as an API server sees them: SQL's answer kept per process, dropped when any key changes.

Every authenticated request read its key from SQL (one query; on SQLite several hops to the
driver's thread): about a seventh of `routeq serve`'s CPU for a chat completion. `KeyCache` keeps
each active key it looked up, tagged with two versions read *before* that lookup:

- the fleet's key version, `routeq:api-keys:version` in Redis: a random token that every change of
  a key (revoke, rate limits, allowed models) replaces after its SQL commit (`announce_key_change`;
  the `routeq keys` commands call it);
- this process's count of key changes made through its own store (`ApiKeys.changes`).

A request reads the fleet's version after it arrived (one GET, pipelined with the other Redis
calls of its event-loop turn, `storage.bus.coalesce`); a key cached under another version, or
before a local change, is read from SQL again. So a change committed and announced before a
request arrives is seen by that request on every server: a revoked key is refused at once. A
token, not a counter: a Redis that lost its data (the key gone) or started again never hands back a
version a server holds. Unknown and revoked secrets are not kept (a new key needs no announcement),
and a kept key is read again after `KEY_CACHE_TTL_S` at most, in case an announcement was lost (the
command that changed the key says when it could not reach Redis). When Redis does not answer the
GET, the request reads SQL as before: the cache never makes a server depend on Redis for auth.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from storage import keys
from storage.bus.coalesce import coalescer_for
from storage.sql.api_keys import ApiKey, ApiKeys, hash_secret

__all__ = ["KEY_CACHE_TTL_S", "KeyCache", "announce_key_change"]

logger = logging.getLogger("routeq.api.keys")

# A kept key is read from SQL again after this long, announced change or not.
KEY_CACHE_TTL_S = 60.0
# More keys than this in one process: the cache starts again (memory stays bounded).
_MAX_KEYS = 10_000


async def announce_key_change(redis: Redis) -> None:
    """Tell every API server that a key changed (call after the SQL commit): each reads its keys
    from SQL again on its next request."""
    await redis.set(keys.API_KEYS_VERSION, secrets.token_hex(8))


@dataclass(frozen=True, slots=True)
class _Kept:
    key: ApiKey
    fleet_version: bytes | str | None  # routeq:api-keys:version when the key was read
    local_changes: int  # ApiKeys.changes when the key was read
    until: float  # monotonic time past which it is read again


class KeyCache:
    """`ApiKeys.authenticate` with the active keys kept between requests (see the module doc)."""

    def __init__(
        self,
        redis: Redis,
        api_keys: ApiKeys,
        *,
        ttl_s: float = KEY_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._coalescer = coalescer_for(redis)
        self._api_keys = api_keys
        self._ttl_s = ttl_s
        self._clock = clock
        self._kept: dict[str, _Kept] = {}
        self.sql_reads = 0  # lookups that went to SQL (tests)

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, or None (unknown or revoked)."""
        digest = hash_secret(secret)
        local = self._api_keys.changes
        try:
            fleet: bytes | str | None = await self._coalescer.execute("GET", keys.API_KEYS_VERSION)
        except (RedisError, OSError) as exc:
            logger.debug("key version unreadable (%s): the key is read from SQL", exc)
            self.sql_reads += 1
            return await self._api_keys.authenticate(secret)
        kept = self._kept.get(digest)
        if (
            kept is not None
            and kept.fleet_version == fleet
            and kept.local_changes == local
            and kept.until > self._clock()
        ):
            return kept.key
        self.sql_reads += 1
        key = await self._api_keys.authenticate(secret)
        if key is None:
            self._kept.pop(digest, None)
            return None
        if len(self._kept) >= _MAX_KEYS:
            self._kept.clear()
        self._kept[digest] = _Kept(key, fleet, local, self._clock() + self._ttl_s)
        return key
