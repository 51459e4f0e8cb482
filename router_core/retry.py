"""How the router retries one deployment: the policy's limits and the wait before the next try.

Shared by chat (`Router.complete`, `Router.stream`) and embeddings (`router_core.embedder`), so a
429's Retry-After and the backoff mean the same everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from router_core.settings import RouterSettings

__all__ = ["RetryPolicy", "backoff"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts_per_deployment: int = 3
    max_attempts_total: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    max_retry_after_s: float = 60.0
    default_timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, s: RouterSettings) -> RetryPolicy:
        return cls(
            max_attempts_per_deployment=s.max_attempts_per_deployment,
            max_attempts_total=s.max_attempts_total,
            backoff_base_s=s.backoff_base_s,
            backoff_max_s=s.backoff_max_s,
            max_retry_after_s=s.max_retry_after_s,
            default_timeout_s=s.default_timeout_ms / 1000,
        )

    @property
    def longest_walk_s(self) -> float:
        """The longest a walk over a plan calls providers: every attempt at the default timeout, each
        after the longest wait it honours (a request's own longer `timeout_ms` may outlast it)."""
        return self.max_attempts_total * (self.default_timeout_s + self.max_retry_after_s)


def backoff(policy: RetryPolicy, rng: random.Random, retry_number: int, retry_after: float | None) -> float:
    """Full jitter (uniform over 0..base*2^n, capped), but never less than Retry-After."""
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2**retry_number)
    return max(rng.uniform(0, ceiling), retry_after or 0.0)
