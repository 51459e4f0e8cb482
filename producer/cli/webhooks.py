"""`routeq webhooks`: a tenant's endpoints, the tenant's batch-webhook secret, and the deliveries.

    add URL [--event T ...]   register an endpoint; its signing secret is printed once
    list / remove ID          the tenant's endpoints; stop sending to one
    secret                    the secret the tenant's batches' own URLs (`--webhook`) are signed with
    deliveries                what was sent: state, attempts, last status or error (--batch, --state)
    retry ID                  send a failed delivery again (one more attempt, by any worker)

They act on SQL only (the workers send): `--tenant` defaults to ROUTEQ_TENANT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from producer.cli._common import JsonFlag, execute, fail, load_settings, print_json, with_store

if TYPE_CHECKING:
    from storage.sql.store import Store

__all__ = ["webhooks_app"]

console = Console()

webhooks_app = typer.Typer(help="Webhooks: endpoints that receive batch and job events, and deliveries.")

TenantOpt = Annotated[str | None, typer.Option(help="The tenant (default: ROUTEQ_TENANT).")]


def _tenant(tenant: str | None) -> str:
    return tenant or load_settings().tenant


def _plain(line: str) -> None:
    console.print(line, soft_wrap=True, markup=False, emoji=False, highlight=False)


@webhooks_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="http:// or https:// URL that receives the events.")],
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="batch.completed, batch.failed or job.failed (repeat; default: all)."),
    ] = None,
    tenant: TenantOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Register an endpoint; prints its id and its signing secret (shown this once only)."""
    from router_core.errors import InvalidRequestError  # noqa: PLC0415 - start-up: imported on use
    from storage.webhooks import check_events, check_url  # noqa: PLC0415 - start-up: imported on use

    name = _tenant(tenant)
    try:
        checked, events = check_url(url), check_events(event or [])
    except InvalidRequestError as exc:
        raise fail(str(exc)) from exc
    endpoint = execute(
        with_store(load_settings(), lambda store: store.webhooks.add_endpoint(name, checked, events))
    )
    if as_json:
        print_json(endpoint.view())
        return
    _plain(f"{endpoint.id}  {endpoint.url}  {', '.join(e.value for e in endpoint.events)}")
    _plain(f"signing secret (shown once, keep it): {endpoint.secret}")


@webhooks_app.command("list")
def list_endpoints(tenant: TenantOpt = None, as_json: JsonFlag = False) -> None:
    """The tenant's endpoints (never their secrets)."""
    name = _tenant(tenant)
    found = execute(with_store(load_settings(), lambda store: store.webhooks.endpoints(name)))
    if as_json:
        print_json({"endpoints": [e.view() for e in found]})
        return
    for e in found:
        _plain(
            f"{e.id}  {e.url}  {', '.join(v.value for v in e.events)}  since {e.created_at:%Y-%m-%d %H:%M}"
        )
    if not found:
        _plain(f"no webhook endpoints for tenant {name} (`routeq webhooks add URL`)")


@webhooks_app.command("remove")
def remove(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (whe_...).")], tenant: TenantOpt = None
) -> None:
    """Stop sending to an endpoint; its pending deliveries are given up."""
    name = _tenant(tenant)
    execute(
        with_store(load_settings(), lambda store: store.webhooks.remove_endpoint(endpoint_id, tenant=name))
    )
    _plain(f"removed {endpoint_id}")


@webhooks_app.command("secret")
def secret(tenant: TenantOpt = None) -> None:
    """The secret the tenant's batch webhooks (`routeq submit --webhook URL`) are signed with."""
    name = _tenant(tenant)
    _plain(execute(with_store(load_settings(), lambda store: store.webhooks.tenant_secret(name))))


@webhooks_app.command("deliveries")
def deliveries(
    batch: Annotated[str | None, typer.Option(help="One batch's deliveries.")] = None,
    state: Annotated[str | None, typer.Option(help="pending, delivered or failed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    tenant: TenantOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """What was sent, newest first: event, state, attempts, last status or error (--json: every attempt)."""
    from storage.webhooks import DeliveryState  # noqa: PLC0415 - start-up: imported on use

    name = _tenant(tenant)
    if state is not None and state not in {s.value for s in DeliveryState}:
        raise fail(f"--state: {state!r} is not one of pending, delivered, failed")
    wanted = DeliveryState(state) if state is not None else None

    async def go(store: Store) -> None:
        found = await store.webhooks.deliveries(tenant=name, batch_id=batch, state=wanted, limit=limit)
        if as_json:
            print_json({"deliveries": [d.view() for d in found]})
            return
        for d in found:
            last = d.last_error or (f"HTTP {d.last_status}" if d.last_status else "-")
            _plain(f"{d.id}  {d.event_type.value}  {d.state.value}  {d.attempts} attempts  {last}  {d.url}")
        if not found:
            _plain("no webhook deliveries")

    execute(with_store(load_settings(), go))


@webhooks_app.command("retry")
def retry(
    delivery_id: Annotated[str, typer.Argument(help="A failed delivery's id (whd_...).")],
    tenant: TenantOpt = None,
) -> None:
    """Send a failed delivery again: due now, for one more attempt by any worker."""
    name = _tenant(tenant)
    try:
        execute(with_store(load_settings(), lambda store: store.webhooks.retry(delivery_id, tenant=name)))
    except ValueError as exc:
        raise fail(str(exc)) from exc
    _plain(f"{delivery_id} is due again")
