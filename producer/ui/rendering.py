"""Pages from templates: the Jinja2 environment (templates shipped in the package), the filters
numbers are shown with, and the route class that turns the dashboard's errors into pages.

The API answers errors as JSON (producer/api/errors.py); a browser wants a page: `UiRoute` catches
what a dashboard route raises and answers a redirect to sign in (303), a refusal (403), an unknown
or foreign id (404, the same page for both) or a bad form value (400) as HTML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape

from producer.ui.sessions import Forbidden, Session, SignInRequired
from storage.errors import NotFoundError

__all__ = ["BadForm", "UiRoute", "page"]


class BadForm(Exception):
    """A form value the dashboard cannot act on (a 400 page naming it)."""


def _money(value: float | Decimal | None) -> str:
    if value is None:
        return "-"
    return _dollars(float(value))


def _dollars(amount: float) -> str:
    """Money to the digit that matters: a simulated prompt costs millionths of a dollar."""
    if amount == 0:
        return "$0.00"
    if abs(amount) < 1:
        return f"${amount:.6f}"
    return f"${amount:,.4f}" if abs(amount) < 100 else f"${amount:,.2f}"


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _when(value: datetime | float | None) -> str:
    if value is None:
        return "-"
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


_env = Environment(
    loader=PackageLoader("producer.ui", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(money=_money, ms=_ms, pct=_pct, when=_when, ago=_ago)

NAV = (
    ("/ui", "Overview"),
    ("/ui/batches", "Batches"),
    ("/ui/providers", "Providers"),
    ("/ui/analytics", "Analytics"),
    ("/ui/budgets", "Budgets"),
    ("/ui/workers", "Workers"),
)


def page(
    request: Request, template: str, session: Session | None, *, status_code: int = 200, **values: Any
) -> HTMLResponse:
    """The template rendered with the layout's values (navigation, who is signed in, the CSRF token)."""
    html = _env.get_template(template).render(
        request=request,
        session=session,
        nav=NAV,
        path=request.url.path,
        **values,
    )
    return HTMLResponse(html, status_code=status_code, headers={"cache-control": "no-store"})


def _error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return page(request, "error.html", None, status_code=status, title=title, message=message)


class UiRoute(APIRoute):
    """A dashboard route: its errors answered as pages (or the sign-in redirect), not as JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired as exc:
                return RedirectResponse(f"/ui/login?next={quote(exc.next_path, safe='/')}", status_code=303)
            except Forbidden as exc:
                return _error_page(request, 403, "Not allowed", str(exc))
            except NotFoundError as exc:
                # Another tenant's id gets this same page: it tells nothing about what exists.
                return _error_page(request, 404, "Not found", f"There is no {exc.kind} {exc.id} here.")
            except BadForm as exc:
                return _error_page(request, 400, "Bad request", str(exc))

        return handle
