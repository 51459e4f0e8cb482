"""The web dashboard's routes: server-rendered pages under /ui, signed in with an API key.

    /ui/login, /ui/logout                 sign in (a session in Redis) and out     (sessions.py)
    /ui                                   overview: queue, workers, jobs/s, in flight, spend, circuits
    /ui/batches, /ui/batches/live         the tenant's batches, newest first; live progress (SSE)
    /ui/batches/{id}, .../live            one batch: counts, cost, deployments, failures, jobs; live
    /ui/batches/{id}/cancel               cancel (the API's cancel)
    /ui/batches/{id}/download/{kind}      results, output or errors as JSONL
    /ui/jobs/{id}                         one job: plan, attempts, cost, answer
    /ui/providers, .../{id}/force         deployments; operators force one down, up or back to auto
    /ui/analytics, /ui/budgets, /ui/workers
    /ui/static/{name}                     the stylesheet and the script, from the package

Every page reads as the signed-in key's tenant, with the API's own reads and rules (another tenant's
batch or job is a 404), and every form that changes something carries the session's CSRF token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources import files
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError

from producer.api.auth import Principal
from producer.api.batches import batch_lines, cancel_queued
from producer.api.context import ApiContext, Ctx
from producer.api.ops import force_deployment
from producer.cache_views import stats_view
from producer.planning import plan_view
from producer.quality_views import quality_view
from producer.ui import charts, live, views
from producer.ui.rendering import BadForm, UiRoute, page
from producer.ui.sessions import (
    COOKIE,
    Forbidden,
    Session,
    UiSession,
    checked_form,
    create_session,
    delete_session,
    same_origin,
)
from router_core.models import AttemptOutcome, ChatRequest, Plan
from storage import keys
from storage.sql.analytics import analytics as compute_analytics

__all__ = ["router"]

router = APIRouter(route_class=UiRoute, include_in_schema=False)

FormSession = Annotated[Session, Depends(checked_form)]
_STATIC = {"ui.css": "text/css", "ui.js": "text/javascript"}
_ANALYTICS_DAYS = 14


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    if name not in _STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    body = files("producer.ui").joinpath("static", name).read_bytes()
    return Response(body, media_type=_STATIC[name], headers={"cache-control": "max-age=300"})


# -- signing in and out ---------------------------------------------------------------------------


def _next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only (never another site)."""
    if not target:
        return "/ui"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui") or target.startswith("//"):
        return "/ui"
    return target


@router.get("/ui/login")
async def login_page(request: Request, ctx: Ctx, next: str | None = None) -> Response:
    if ctx.settings.api_dev_mode:
        return RedirectResponse(_next(next), status_code=303)
    return page(request, "login.html", None, next=_next(next), error=None)


@router.post("/ui/login")
async def login(
    request: Request,
    ctx: Ctx,
    api_key: Annotated[str, Form(max_length=512)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/ui",
) -> Response:
    if not same_origin(request):
        raise Forbidden("this sign-in was sent from another site (its Origin is not this host)")
    key = await ctx.store.api_keys.authenticate(api_key.strip()) if api_key.strip() else None
    if key is None:
        error = "That API key is unknown or revoked. Make one with `routeq keys create`."
        return page(request, "login.html", None, status_code=401, next=_next(next), error=error)
    token, _csrf = await create_session(ctx.redis, key.id)
    response = RedirectResponse(_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=keys.UI_SESSION_TTL_S,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/ui/logout")
async def logout(session: FormSession, ctx: Ctx) -> Response:
    response = RedirectResponse("/ui/login" if session.token else "/ui", status_code=303)
    if session.token is not None:
        await delete_session(ctx.redis, session.token)
        response.delete_cookie(COOKIE, path="/ui")
    return response


# -- pages ----------------------------------------------------------------------------------------


@router.get("/ui")
async def overview(request: Request, session: UiSession, ctx: Ctx) -> HTMLResponse:
    figures = await views.overview(ctx, session.principal)
    return page(request, "overview.html", session, **figures)


@router.get("/ui/batches")
async def batches(
    request: Request, session: UiSession, ctx: Ctx, after: Annotated[str | None, Query(max_length=64)] = None
) -> HTMLResponse:
    tenant = session.principal.tenant
    found = await ctx.store.batches.list(
        tenant=tenant, after=after, limit=views.JOBS_PER_PAGE + 1, counts=False
    )
    shown = await views.counted(ctx, found[: views.JOBS_PER_PAGE])
    more = len(found) > views.JOBS_PER_PAGE
    rows = [views.batch_snapshot(b, Decimal(0)) | {"created_at": b.created_at, "name": b.name} for b in shown]
    watch = ",".join(row["id"] for row in rows if not row["ended"])
    next_after = shown[-1].id if more else None
    return page(request, "batches.html", session, rows=rows, next_after=next_after, watch=watch)


@router.get("/ui/batches/live")
async def batches_live(
    session: UiSession, ctx: Ctx, ids: Annotated[str, Query(max_length=4000)] = ""
) -> StreamingResponse:
    wanted = [i for i in ids.split(",") if i][: views.JOBS_PER_PAGE]
    return live.event_stream(live.batches_stream(ctx, session.principal, wanted))


@router.get("/ui/batches/{batch_id}")
async def batch(
    request: Request, batch_id: str, session: UiSession, ctx: Ctx, after: Annotated[int, Query(ge=-1)] = -1
) -> HTMLResponse:
    shown = await views.batch_page(ctx, session.principal, batch_id, after)
    return page(request, "batch.html", session, view=shown, b=shown.figures)


@router.get("/ui/batches/{batch_id}/live")
async def batch_live(batch_id: str, session: UiSession, ctx: Ctx) -> StreamingResponse:
    await ctx.store.batches.get(batch_id, tenant=session.principal.tenant)  # another tenant's: 404
    return live.event_stream(live.batch_stream(ctx, session.principal, batch_id))


@router.post("/ui/batches/{batch_id}/cancel")
async def cancel(batch_id: str, session: FormSession, ctx: Ctx) -> RedirectResponse:
    await cancel_queued(ctx, session.principal, batch_id)
    return RedirectResponse(f"/ui/batches/{batch_id}", status_code=303)


@router.get("/ui/batches/{batch_id}/download/{kind}")
async def download(
    batch_id: str, kind: Literal["results", "output", "errors"], session: UiSession, ctx: Ctx
) -> StreamingResponse:
    tenant = session.principal.tenant
    await ctx.store.batches.get(batch_id, tenant=tenant)  # another tenant's: 404 before streaming
    name = f"{batch_id}_{kind}.jsonl"
    return StreamingResponse(
        batch_lines(ctx, batch_id, tenant, kind),
        media_type="application/jsonl",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


@router.get("/ui/jobs/{job_id}")
async def job(request: Request, job_id: str, session: UiSession, ctx: Ctx) -> HTMLResponse:
    tenant = session.principal.tenant
    record = await ctx.store.jobs.get(job_id, tenant=tenant)
    attempts = await ctx.store.jobs.attempts(job_id, tenant=tenant)
    # The plan its last planned run routed with; before any run (or for a run that made none, a cache
    # hit), how the fleet would route the request now.
    recorded = await ctx.store.jobs.plan(job_id, tenant=tenant)
    try:
        if recorded is not None:
            plan = plan_view(Plan.model_validate(recorded[1]))
        else:
            stored = ChatRequest.model_validate(record.request)
            plan = plan_view(await ctx.planner.preview(stored, ctx.catalog))
    except ValidationError:  # stored before a field changed meaning: show the job without it
        plan = None
    segments = [
        charts.Segment(
            f"{a['deployment']} #{a['attempt_no']}",
            float(a["wait_ms"] or 0),
            float(a["latency_ms"] or 0),
            a["outcome"] == AttemptOutcome.SUCCESS.value,
        )
        for a in attempts
    ]
    content = (record.result or {}).get("content")
    return page(
        request,
        "job.html",
        session,
        job=record,
        attempts=attempts,
        plan=plan,
        plan_run=recorded[0] if recorded is not None else None,
        timeline=charts.timeline(segments),
        answer=content,
        failure=record.failure,
    )


@router.get("/ui/providers")
async def providers(request: Request, session: UiSession, ctx: Ctx) -> HTMLResponse:
    return page(request, "providers.html", session, rows=await views.providers(ctx))


@router.post("/ui/providers/{deployment_id}/force")
async def force(
    deployment_id: str, session: FormSession, ctx: Ctx, state: Annotated[str, Form(max_length=8)] = ""
) -> RedirectResponse:
    if not session.principal.operator:
        raise Forbidden("forcing a deployment acts on the whole fleet and needs an operator key")
    if state not in {"down", "up", "auto"}:
        raise BadForm(f"state: must be down, up or auto, got {state!r}")
    await force_deployment(ctx, deployment_id, state)
    return RedirectResponse("/ui/providers", status_code=303)


@router.get("/ui/analytics")
async def analytics(request: Request, session: UiSession, ctx: Ctx) -> HTMLResponse:
    return page(request, "analytics.html", session, **await _analytics(ctx, session.principal))


async def _analytics(ctx: ApiContext, principal: Principal) -> dict[str, Any]:
    until = datetime.now(UTC)
    since = (until - timedelta(days=_ANALYTICS_DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    report = await compute_analytics(ctx.store, tenant=principal.tenant, since=since, until=until)
    days = [(since + timedelta(days=i)).date().isoformat() for i in range(_ANALYTICS_DAYS)]
    models = sorted({row.model for row in report.daily})
    costs = {model: [0.0] * len(days) for model in models}
    for row in report.daily:
        costs[row.model][days.index(row.date.isoformat())] += float(row.cost_usd)
    cache = stats_view(principal.tenant, since, await ctx.store.cache.stats(principal.tenant, since=since))
    return {
        "report": report,
        "days": _ANALYTICS_DAYS,
        "cost_chart": charts.stacked_bars("cost-chart", days, costs),
        "cache": cache,
        "quality": quality_view(ctx.catalog, await ctx.quality.board()),
    }


@router.get("/ui/budgets")
async def budgets(request: Request, session: UiSession, ctx: Ctx) -> HTMLResponse:
    return page(request, "budgets.html", session, rows=await views.budget_rows(ctx, session.principal))


@router.get("/ui/workers")
async def workers(request: Request, session: UiSession, ctx: Ctx) -> HTMLResponse:
    entries, now = await views.workers(ctx)
    lease = ctx.settings.job_lease_s
    rows = [(w, w.is_live(job_lease_s=lease, now=now), max(0.0, now - w.seen)) for w in entries]
    return page(request, "workers.html", session, rows=rows)
