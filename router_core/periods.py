"""Budget periods: which calendar day, week or month an instant falls in, in a configured time zone.

A cap's period is `lifetime` (never resets), `daily`, `weekly` (weeks start on Monday) or `monthly`.
A period starts at local midnight in the fleet's zone (`ROUTEQ_BUDGET_TIMEZONE`, an IANA name, UTC by
default) and ends where the next one starts, so a month in America/New_York starts at 05:00 UTC
(04:00 in summer). Days around a daylight-saving change are 23 or 25 hours long: the boundaries are
local midnights, computed by `zoneinfo`, never "start + 86400 s".

    period_bounds(DAILY, at, zone)   -> (start, end), aware datetimes in `zone`
    period_label(start)              -> "2026-01-01": the local date a period starts on (Redis keys)

The same functions bucket the SQL ledger for spend per day, week or month (storage/sql/spend.py),
so a budget's period and the analytics' period agree on every boundary.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "RESETTING",
    "BudgetPeriod",
    "load_zone",
    "period_bounds",
    "period_label",
    "period_starts",
]


class BudgetPeriod(enum.StrEnum):
    """How often a cap starts again from zero."""

    LIFETIME = "lifetime"  # never: spend since the scope began (the only kind before periods)
    DAILY = "daily"
    WEEKLY = "weekly"  # Monday to Monday
    MONTHLY = "monthly"

    @classmethod
    def parse(cls, text: str) -> BudgetPeriod:
        """The period named `text`.

        Raises:
            ValueError: not one of lifetime, daily, weekly, monthly (the message lists them).
        """
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown budget period {text!r}; use one of: {names}") from None


# The periods that reset, in the order their counters are kept (reserve's Lua relies on it).
RESETTING = (BudgetPeriod.DAILY, BudgetPeriod.WEEKLY, BudgetPeriod.MONTHLY)


def load_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (`UTC`, `Europe/Paris`, `America/New_York`).

    Raises:
        ValueError: not a zone the system's (or the tzdata package's) database knows.
    """
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC', 'Europe/Paris' or "
            "'America/New_York'"
        ) from None


def _midnight(day: date, zone: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def _first_day(period: BudgetPeriod, day: date) -> date:
    if period is BudgetPeriod.DAILY:
        return day
    if period is BudgetPeriod.WEEKLY:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_first_day(period: BudgetPeriod, first: date) -> date:
    if period is BudgetPeriod.DAILY:
        return first + timedelta(days=1)
    if period is BudgetPeriod.WEEKLY:
        return first + timedelta(days=7)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def period_bounds(period: BudgetPeriod, at: datetime | float, zone: tzinfo) -> tuple[datetime, datetime]:
    """The period holding instant `at` (an aware datetime, or epoch seconds): `[start, end)` as aware
    datetimes in `zone`, each a local midnight.

    Raises:
        ValueError: `period` is lifetime, which has no bounds.
    """
    if period is BudgetPeriod.LIFETIME:
        raise ValueError("a lifetime budget has no period bounds")
    moment = datetime.fromtimestamp(at, UTC) if isinstance(at, int | float) else at
    first = _first_day(period, moment.astimezone(zone).date())
    return _midnight(first, zone), _midnight(_next_first_day(period, first), zone)


def period_label(start: datetime) -> str:
    """The local date a period starts on, as its Redis counter and reports name it (`2026-01-01`)."""
    return start.date().isoformat()


def period_starts(
    period: BudgetPeriod, since: datetime, until: datetime, zone: tzinfo, *, limit: int = 1000
) -> list[datetime]:
    """The starts of every period overlapping `[since, until)`, in order: the first may be before
    `since` (the window cuts it), the last is before `until`.

    Raises:
        ValueError: more than `limit` periods (the message says so), or one ends past year 9999.
    """
    start, end = period_bounds(period, since, zone)
    starts = [start]
    while end < until:
        if len(starts) == limit:
            raise ValueError(f"the window holds more than {limit} {period.value} periods: shorten it")
        starts.append(end)
        end = _midnight(_next_first_day(period, end.date()), zone)
    return starts
