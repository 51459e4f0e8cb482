"""Money in the fleet's budgets: integer micro-dollars, each amount rounded the safe way.

Lua's doubles add whole micro-dollars exactly up to 2^53 (about 9 billion USD). A hold is rounded
up (never smaller than its call), a cap down (counters in whole micros never pass it in USD), and a
charge as the ledger stores it, then up.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from storage.connections import as_text

__all__ = ["cap_micro", "charge_micro", "hold_micro", "usd"]

_MICRO = Decimal(1_000_000)
# The ledger stores cost_usd as Numeric(20, 10): a charge is rounded as it is stored, then to micros.
_LEDGER_QUANTUM = Decimal("1e-10")


def hold_micro(usd: float) -> int:
    """A worst-case amount in micro-dollars, rounded up: a hold is never smaller than the call."""
    if usd < 0:
        raise ValueError(f"cannot hold a negative amount (${usd})")
    return int((Decimal(repr(usd)) * _MICRO).to_integral_value(ROUND_CEILING))


def charge_micro(usd: float | Decimal) -> int:
    """A real cost in micro-dollars: rounded as the ledger stores it, then up to a whole micro.

    The same rule as `Ledger.micro_spent_by_owner` (the rebuild): keep the two in step.
    """
    value = usd if isinstance(usd, Decimal) else Decimal(repr(usd))
    if value < 0:
        raise ValueError(f"cannot charge a negative cost (${usd})")
    # PostgreSQL rounds NUMERIC half away from zero; for a cost (never negative) that is half-up.
    stored = value.quantize(_LEDGER_QUANTUM, ROUND_HALF_UP)
    return int((stored * _MICRO).to_integral_value(ROUND_CEILING))


def cap_micro(usd: float) -> int:
    """A cap in micro-dollars, rounded down: counters in whole micros must not pass the cap in USD."""
    if not math.isfinite(usd):
        raise ValueError(f"a spend cap must be a finite amount of USD, not {usd}")
    if usd < 0:
        raise ValueError(f"a spend cap cannot be negative (${usd}); use 0 to allow no spend")
    return int((Decimal(repr(usd)) * _MICRO).to_integral_value(ROUND_FLOOR))


def usd(micro: bytes | str | int | None) -> float:
    return int(as_text(micro or 0)) / 1e6
