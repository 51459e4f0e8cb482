"""The seam between the router and a spend budget: reserve before a call, release if not billed.

Before each attempt the router reserves the call's worst-case cost (the prompt estimate times a
safety margin plus `max_tokens`, at the deployment's price). A guard that refuses says which cap and
by how much; the router then tries a cheaper candidate or fails with `BudgetExceededError`. A call
the provider did not bill (an error without usage) is released at once. Billed calls keep their
reservation: whoever persists the charge settles it to the real cost afterwards, so a worker that
dies between the call and the ledger leaves a record of the call behind (see `storage.fleet.budgets`).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["SpendGuard", "SpendRefusal"]


class SpendRefusal(str):
    """Why a hold was refused, as one line naming the cap.

    `wait` is true when only other calls' holds stand in the way: once they settle (usually below
    their worst case) there may be room, so the job is worth deferring rather than failing.
    """

    wait: bool

    def __new__(cls, message: str, *, wait: bool = False) -> SpendRefusal:
        refusal = super().__new__(cls, message)
        refusal.wait = wait
        return refusal


class SpendGuard(Protocol):
    async def reserve(self, attempt_no: int, deployment_id: str, amount_usd: float) -> SpendRefusal | None:
        """Hold `amount_usd` for attempt `attempt_no`; None when held, else why not."""
        ...

    async def release(self, attempt_no: int) -> None:
        """Drop the hold of an attempt that was not sent or not billed."""
        ...
