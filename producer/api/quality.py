"""Learned quality's routes: users rate answers (`/v1/feedback`), and see what routing learned
(`/v1/quality`).

Feedback is the caller's tenant's: rating another tenant's job is a 404, like reading it. Each rating
is kept as history and counted as evidence for the deployment that gave the answer; the fleet plans
with it within `ROUTEQ_QUALITY_REFRESH_S`. The learned scores are the fleet's (a deployment's quality
is the same for every tenant), readable by any key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from producer.api.auth import Caller
from producer.api.context import Ctx
from producer.api.errors import ApiError
from producer.api.schemas import FeedbackBody
from producer.quality_views import feedback_list_view, quality_view
from router_core.errors import InvalidRequestError

__all__ = ["router"]

router = APIRouter(tags=["Quality"])


@router.post("/v1/feedback", summary="Rate a job's answer (1-5 stars or thumbs up/down)")
async def post_feedback(body: FeedbackBody, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    """The rating is stored (see `GET /v1/feedback`) and counts towards the learned quality of the
    deployment that answered. A job served from the cache is rated through its source job."""
    try:
        made = await ctx.quality.add_feedback(
            tenant=principal.tenant, user_id=principal.user, **body.model_dump()
        )
    except InvalidRequestError as exc:
        raise ApiError(400 if exc.field != "job_id" else 409, str(exc), param=exc.field) from None
    return made.as_json()


@router.get("/v1/feedback", summary="The tenant's feedback, newest first")
async def list_feedback(
    principal: Caller,
    ctx: Ctx,
    *,
    job_id: Annotated[str | None, Query(max_length=40, description="One job's feedback only.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        str | None, Query(max_length=40, description="The `last_id` of the previous page.")
    ] = None,
) -> dict[str, Any]:
    items = await ctx.store.quality.history(principal.tenant, job_id=job_id, limit=limit, before=after)
    return feedback_list_view(items, limit=limit)


@router.get("/v1/quality", summary="Each deployment's catalog quality next to what routing learned")
async def get_quality(principal: Caller, ctx: Ctx) -> dict[str, Any]:
    """Learned quality per deployment and per capability, with the samples behind each; the planner
    ranks `quality` and `balanced` and checks `min_quality` with these."""
    return quality_view(ctx.catalog, await ctx.quality.board())
