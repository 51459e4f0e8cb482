"""The seam between the router and a spend budget: reserve before a call, release if not billed.

Before each attempt the router reserves the call's worst-case cost (the prompt estimate times a
safety margin plus `max_tokens`, at the deployment's price). A guard that refuses says which cap and
by how much; the router then tries a cheaper candidate or fails with `BudgetExceededError`. A call
the provider did not bill (an error without usage) is released at once. Billed calls keep their
reservation: whoever persists the charge settles it to the real cost afterwards, so a worker that
dies between the call and the ledger leaves a record of the call behind (see `storage.budgets`).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["SpendGuard"]


class SpendGuard(Protocol):
    async def reserve(self, attempt_no: int, deployment_id: str, amount_usd: float) -> str | None:
        """Hold `amount_usd` for attempt `attempt_no`; None when held, else why not (one line)."""
        ...

    async def release(self, attempt_no: int) -> None:
        """Drop the hold of an attempt that was not sent or not billed."""
        ...
