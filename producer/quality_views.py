"""Learned quality and feedback as users see them, as JSON-ready dicts.

One shape for both surfaces: `GET /v1/quality` and `GET /v1/feedback` answer these, and
`routeq quality` / `routeq feedback` print them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router_core.catalog import Catalog
    from router_core.quality import QualityBoard
    from storage.sql.quality import Feedback

__all__ = ["feedback_list_view", "quality_view"]


def quality_view(catalog: Catalog, board: QualityBoard) -> dict[str, Any]:
    """Per chat deployment: the catalog's prior, the learned score over all its answers and per
    capability it has evidence for, and the samples behind each."""
    rows = []
    for dep in catalog.chat_deployments():
        overall = board.score(dep)
        rows.append(
            {
                "deployment": dep.id,
                "prior": dep.quality,
                "learned": round(overall.value, 4),
                "source": overall.source,
                "samples": overall.samples,
                "capabilities": [
                    {
                        "capability": cap.value,
                        "learned": round(board.score(dep, cap).value, 4),
                        "samples": board.samples(dep.id, cap),
                    }
                    for cap in board.capabilities(dep.id)
                ],
            }
        )
    return {"object": "list", "prior_strength": board.strength, "data": rows}


def feedback_list_view(items: list[Feedback], *, limit: int) -> dict[str, Any]:
    """A page of feedback, newest first; `has_more` when a full page came back."""
    return {
        "object": "list",
        "data": [f.as_json() for f in items],
        "has_more": len(items) == limit,
        "last_id": items[-1].id if items else None,
    }
