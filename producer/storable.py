"""What the Python client refuses before anything is written: values the database would refuse or
should never hold (`Client.create` and `submit_chunks` call it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from producer.inputs import MAX_CUSTOM_ID_LENGTH, unstorable_values
from router_core.errors import InvalidRequestError
from router_core.limits import RequestLimits
from storage.jobs import NewJob

__all__ = ["check_storable"]


def check_storable(
    items: Sequence[NewJob], name: str | None, budget_usd: float | None, limits: RequestLimits
) -> None:
    """Refuse, before anything is written, what the database would refuse or should never hold.

    The CLI and the API check their input line by line; this is the same check for callers of the
    Python client, so a bad value is an `InvalidRequestError` naming it, never a failed transaction
    that reads like a database outage (and loses the batch's good requests with it).

    Raises:
        InvalidRequestError: naming the item and field at fault.
    """
    if budget_usd is not None and not (math.isfinite(budget_usd) and budget_usd >= 0):
        raise InvalidRequestError(f"must be a finite number >= 0, got {budget_usd}", field="budget_usd")
    for problem in unstorable_values(name, "name"):
        raise InvalidRequestError(problem)
    for index, item in enumerate(items):
        where = f"items[{index}]"
        if not item.custom_id or len(item.custom_id) > MAX_CUSTOM_ID_LENGTH:
            raise InvalidRequestError(
                f"must be 1 to {MAX_CUSTOM_ID_LENGTH} characters long", field=f"{where}.custom_id"
            )
        problems = [
            *unstorable_values(item.custom_id, f"{where}.custom_id"),
            *unstorable_values(
                item.request.model_dump(mode="python", exclude_defaults=True), f"{where}.request"
            ),
            *(f"{where}.request.{field}: {message}" for field, message in limits.problems(item.request)),
        ]
        if problems:
            raise InvalidRequestError("; ".join(problems))
