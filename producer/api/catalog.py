"""The live catalog over HTTP (operator keys): read it, its history, and add, change or remove deployments.

Each change is validated as the whole new catalog, with the TOML loader's own checks (a bad value
is a 400 naming the deployment and `param` the field), committed as the next version and announced
to the fleet (storage/fleet/catalog.py); this process uses it before answering. `expected_version`
makes a change conditional: if another change came first, 409 and nothing is written. Without it
the change is applied on top of whatever is newest, so two changes never overwrite each other.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from producer.api.auth import Operator, Principal
from producer.api.context import ApiContext, Ctx
from producer.api.errors import ApiError
from router_core import catalog_edit
from router_core.errors import ConfigError
from storage.errors import CatalogConflictError, NotFoundError
from storage.fleet.catalog import Edit, commit_change
from storage.sql.catalog import CatalogVersion

__all__ = ["router"]

router = APIRouter(tags=["Operations"])

Expected = Annotated[
    int | None,
    Query(ge=1, description="Apply only if this is still the newest version (else 409, nothing written)."),
]
Comment = Annotated[str, Query(max_length=1000, description="Why: kept with the version in its history.")]
Entry = Annotated[
    dict[str, Any], Body(description="A deployment's fields, as in a catalog TOML's [[deployments]].")
]


def _version_view(stored: CatalogVersion, *, document: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "object": "routeq.catalog_version",
        "version": stored.version,
        "created_at": stored.created_at.isoformat(),
        "author": stored.author,
        "comment": stored.comment,
        "seeded": stored.seed_hash is not None,
        "deployment_count": len(stored.document.get("deployments", [])),
    }
    if document:
        view["deployments"] = stored.document.get("deployments", [])
    return view


async def _commit(
    ctx: ApiContext, who: Principal, edit: Edit, comment: str, expected: int | None
) -> dict[str, Any]:
    """Commit `edit`, pick the new version up in this process, and answer with it."""
    try:
        stored, _ = await commit_change(
            ctx.store, ctx.redis, edit, author=who.user, comment=comment, expected=expected
        )
    except catalog_edit.UnknownDeploymentError as exc:
        raise NotFoundError("deployment", exc.deployment_id) from exc
    except ConfigError as exc:
        raise ApiError(400, str(exc), param=exc.field, code="invalid_catalog") from exc
    except CatalogConflictError as exc:
        raise ApiError(409, str(exc), param="expected_version", code="catalog_conflict") from exc
    await ctx.live.refresh()  # read-your-writes: this process's next request sees it
    return _version_view(stored)


@router.get("/v1/admin/catalog", summary="The live catalog: its version and deployments (operator)")
async def get_catalog(
    _operator: Operator, ctx: Ctx, version: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    """The newest version, or `version` from the history; deployments as their TOML tables say."""
    stored = await (ctx.store.catalog.newest() if version is None else ctx.store.catalog.get(version))
    if stored is None:
        raise NotFoundError("catalog version", str(version or "newest"))
    return _version_view(stored)


@router.get("/v1/admin/catalog/history", summary="The live catalog's versions, newest first (operator)")
async def catalog_history(
    _operator: Operator, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> dict[str, Any]:
    versions = await ctx.store.catalog.history(limit=limit)
    return {"object": "list", "data": [_version_view(v, document=False) for v in versions]}


@router.post(
    "/v1/admin/catalog/deployments",
    status_code=201,
    summary="Add a deployment to the live catalog (operator)",
)
async def add_deployment(
    entry: Entry, operator: Operator, ctx: Ctx, expected_version: Expected = None, comment: Comment = ""
) -> dict[str, Any]:
    return await _commit(ctx, operator, lambda doc: catalog_edit.add(doc, entry), comment, expected_version)


@router.patch(
    "/v1/admin/catalog/deployments/{deployment_id}", summary="Change a deployment's fields (operator)"
)
async def change_deployment(
    deployment_id: str,
    fields: Entry,
    operator: Operator,
    ctx: Ctx,
    *,
    expected_version: Expected = None,
    comment: Comment = "",
) -> dict[str, Any]:
    """Set each field given (`null` removes it: back to its default), e.g. `{"enabled": false}`."""

    def edit(doc: catalog_edit.Document) -> Any:
        return catalog_edit.change(doc, deployment_id, fields)

    return await _commit(ctx, operator, edit, comment, expected_version)


@router.delete(
    "/v1/admin/catalog/deployments/{deployment_id}",
    summary="Remove a deployment from the live catalog (operator)",
)
async def remove_deployment(
    deployment_id: str, operator: Operator, ctx: Ctx, expected_version: Expected = None, comment: Comment = ""
) -> dict[str, Any]:
    def edit(doc: catalog_edit.Document) -> Any:
        return catalog_edit.remove(doc, deployment_id)

    return await _commit(ctx, operator, edit, comment, expected_version)
