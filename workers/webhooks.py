"""The webhooks' sender: every worker POSTs the outbox's due deliveries, signed, and records each try.

    every webhook_poll_s   store.webhooks.claim_due: up to 20 pending deliveries due now, each for
                           its next attempt (one UPDATE ... RETURNING: the claim pushes the delivery
                           past the attempt's lease, so two workers never send the same attempt)
    each claimed one       POST the stored body with the Standard Webhooks headers (webhook-id: the
                           event's, the same on every attempt; webhook-timestamp: now; signature
                           over both and the body), httpx2, webhook_timeout_s
    the answer             2xx: delivered. Anything else (or no answer): recorded with its status or
                           error, latency and the answer's first 500 characters; due again after
                           webhook_backoff_s x 2^(n-1) (at most webhook_backoff_max_s, never sooner
                           than a 429/503's Retry-After), or failed once webhook_max_attempts were made

Every worker sends: the claim in SQL is the lock, so the fleet shares the deliveries and no Redis
lock is taken. A worker that dies mid-attempt leaves the delivery claimed until its lease ends
(the timeout and a margin), then another worker tries it again as the next attempt. A receiver may
see an event more than once (an answer lost on the way back): `webhook-id` lets it drop repeats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx2
from redis.asyncio import Redis

from router_core.providers.errors import parse_retry_after
from storage.settings import Settings
from storage.sql.database import utcnow
from storage.sql.store import Store
from storage.sql.webhooks import Claimed
from storage.webhooks.model import DeliveryAttempt, DeliveryState
from storage.webhooks.signing import signed_headers
from workers.beat import Beat

__all__ = ["RetryPolicy", "WebhookSender"]

logger = logging.getLogger("routeq.webhooks")

_CLAIM_AT_ONCE = 20
_EXCERPT_CHARS = 500
# A claimed attempt's lease: its timeout and this much more (then another worker may try it).
_LEASE_MARGIN_S = 30.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a delivery waits between attempts and when it is given up."""

    timeout_s: float = 10.0
    max_attempts: int = 8
    backoff_s: float = 5.0
    backoff_max_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
            backoff_max_s=settings.webhook_backoff_max_s,
        )

    def delay_s(self, attempt_no: int, retry_after: float | None = None) -> float:
        """The wait after failed attempt `attempt_no` (from 1), at least `retry_after`, at most the max."""
        backoff = self.backoff_s * 2.0 ** (attempt_no - 1)
        return min(self.backoff_max_s, max(backoff, retry_after or 0.0))


class WebhookSender(Beat):
    """Sends due webhook deliveries every `interval_s` (claims in SQL: no Redis lock)."""

    name = "webhooks"

    def __init__(
        self,
        redis: Redis,
        store: Store,
        policy: RetryPolicy,
        *,
        holder: str,
        interval_s: float,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(redis, lock_key="", holder=holder, interval_s=interval_s)  # no lock taken
        self._store = store
        self.policy = policy
        self._now = now
        # Made at the first attempt: a client costs ~100 ms (its TLS context), and most workers'
        # ticks find nothing due.
        self._client: httpx2.AsyncClient | None = None

    @classmethod
    def from_settings(cls, redis: Redis, store: Store, settings: Settings, *, holder: str) -> WebhookSender:
        return cls(
            redis,
            store,
            RetryPolicy.from_settings(settings),
            holder=holder,
            interval_s=settings.webhook_poll_s,
        )

    async def tick(self) -> int:
        """Send what is due until nothing is (a backlog goes out in one tick); returns attempts made."""
        made = 0
        while not self._stopping.is_set():
            sent = await self.deliver_due()
            made += sent
            if sent < _CLAIM_AT_ONCE:
                break
        return made

    async def deliver_due(self) -> int:
        """Claim the deliveries due now and make one attempt at each; returns how many were made."""
        lease_s = self.policy.timeout_s + _LEASE_MARGIN_S
        claimed = await self._store.webhooks.claim_due(now=self._now(), lease_s=lease_s, limit=_CLAIM_AT_ONCE)
        if claimed and self._client is None:
            self._client = httpx2.AsyncClient(timeout=self.policy.timeout_s, follow_redirects=False)
        await asyncio.gather(*(self._attempt(c) for c in claimed))
        return len(claimed)

    async def _attempt(self, claimed: Claimed) -> None:
        assert self._client is not None  # made by deliver_due
        started = self._now()
        headers = signed_headers(claimed.secret, claimed.event_id, int(started.timestamp()), claimed.body)
        status = None
        error = excerpt = wait = None
        clock = time.perf_counter()
        try:
            # httpx2's timeout bounds each read; this bounds the whole attempt (a receiver trickling bytes).
            async with (
                asyncio.timeout(self.policy.timeout_s),
                self._client.stream("POST", claimed.url, content=claimed.body, headers=headers) as reply,
            ):
                status = reply.status_code
                excerpt = await _excerpt(reply)
                if status in (429, 503):
                    wait = parse_retry_after(reply.headers, now=started.timestamp())
        except (TimeoutError, httpx2.TimeoutException):
            error = f"no answer within {self.policy.timeout_s:g}s (ROUTEQ_WEBHOOK_TIMEOUT_S)"
        except (httpx2.HTTPError, httpx2.InvalidURL, OSError, ValueError) as exc:
            # Recorded as the attempt's outcome: an error escaping here would leave the delivery
            # claimed and tried again at every lease's end, never counted towards giving up.
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency_ms = (time.perf_counter() - clock) * 1000
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        attempt = DeliveryAttempt(claimed.attempt_no, started, latency_ms, status, error, excerpt)
        if error is None:
            state, due = DeliveryState.DELIVERED, started
        elif claimed.attempt_no >= self.policy.max_attempts:
            state, due = DeliveryState.FAILED, started
            logger.warning(
                "webhook %s to %s given up after %d attempts: %s",
                claimed.id,
                claimed.url,
                claimed.attempt_no,
                error,
            )
        else:
            state = DeliveryState.PENDING
            due = self._now() + timedelta(seconds=self.policy.delay_s(claimed.attempt_no, wait))
        await self._store.webhooks.record(claimed, attempt, state=state, next_attempt_at=due)

    async def close(self) -> None:
        await super().close()
        if self._client is not None:
            await self._client.aclose()


async def _excerpt(reply: httpx2.Response) -> str:
    """The first characters of the answer's body (read no further)."""
    data = b""
    async for chunk in reply.aiter_bytes():
        data += chunk
        if len(data) >= _EXCERPT_CHARS:
            break
    return data[:_EXCERPT_CHARS].decode("utf-8", errors="replace")
