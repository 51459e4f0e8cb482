"""Budget scopes: who a charge counts against, as Redis keys name them and as operators type them.

    user:<tenant>/<user>            an API key's user (or the CLI's ROUTEQ_USER): who submits
    end_user:<tenant>/<end user>    the request's own `user` field, the caller's customer
    tenant:<tenant>                 a whole tenant
    eval:<tenant>                   a tenant's evaluations, instead of a user scope
    batch:<id>                      one batch

Each name goes through `keys.key_part` (`%`, `/` and `:` percent-encoded), so `x/y`+`z` and `x`+`y/z`
are two scopes and no scope holds a raw `:` past its kind. Operators type names as they are
(`parse_scope`) and read them back so (`readable_scope`). `storage.fleet.budgets` re-exports these.
"""

from __future__ import annotations

from urllib.parse import unquote

from storage import keys
from storage.sql.evals import EVAL_USER

__all__ = [
    "KINDS",
    "batch_scope",
    "check_scope",
    "end_user_scope",
    "eval_scope",
    "owner_scope",
    "parse_scope",
    "readable_scope",
    "tenant_scope",
    "user_scope",
]

KINDS = ("user:", "end_user:", "tenant:", "batch:", "eval:")
# Scopes named by two names, tenant first: `<kind>:<tenant>/<name>`.
_PAIRED = ("user", "end_user")
_SCOPE_FORMS = (
    "user:<tenant>/<user>, end_user:<tenant>/<end user>, tenant:<tenant>, eval:<tenant> or batch:<id>"
)


def user_scope(tenant: str, user: str) -> str:
    """The budget scope of one user of one tenant: `user:<tenant>/<user>`, each name a `key_part`."""
    return f"user:{keys.key_part(tenant)}/{keys.key_part(user)}"


def end_user_scope(tenant: str, end_user: str) -> str:
    """The budget scope of one end user of one tenant (a request's `user` field):
    `end_user:<tenant>/<end user>`, each name a `key_part`."""
    return f"end_user:{keys.key_part(tenant)}/{keys.key_part(end_user)}"


def tenant_scope(tenant: str) -> str:
    """The budget scope of a whole tenant: `tenant:<tenant>`, the name a `key_part`."""
    return f"tenant:{keys.key_part(tenant)}"


def eval_scope(tenant: str) -> str:
    """The budget scope of a tenant's evaluations (judge calls, reference runs): `eval:<tenant>`."""
    return f"eval:{keys.key_part(tenant)}"


def owner_scope(tenant: str, user: str) -> str:
    """Who pays among a tenant's spenders: its user, or for `EVAL_USER` its evaluation scope."""
    return eval_scope(tenant) if user == EVAL_USER else user_scope(tenant, user)


def batch_scope(batch_id: str) -> str:
    """The budget scope of one batch: `batch:<batch_id>`, the id a `key_part`."""
    return f"batch:{keys.key_part(batch_id)}"


def parse_scope(text: str) -> str:
    """The scope an operator typed (`readable_scope`'s form), as `user_scope` & co. build it.

    Names are written as they are, except that percent escapes are decoded: in a user or end-user
    scope the tenant and the name are split at the one `/`, so a `/` inside either name is written
    `%2F` (and a `%` that could be read as an escape `%25`).

    Raises:
        ValueError: not `user:<tenant>/<user>`, `end_user:<tenant>/<end user>`, `tenant:<tenant>`
            or `batch:<id>`, or a name is empty.
    """
    kind, colon, rest = text.partition(":")
    names = rest.split("/") if kind in _PAIRED else [rest]
    singles = ("tenant", "batch", "eval")
    if not colon or kind not in (*_PAIRED, *singles) or len(names) != (2 if kind in _PAIRED else 1):
        raise ValueError(
            f"not a budget scope: {text!r}; use {_SCOPE_FORMS}"
            " (write a '/' inside a tenant, user or end user name as %2F)"
        )
    decoded = [unquote(name) for name in names]
    if not all(decoded):
        raise ValueError(f"not a budget scope: {text!r}; a name is empty")
    if kind == "user":
        return user_scope(*decoded)
    if kind == "end_user":
        return end_user_scope(*decoded)
    if kind == "eval":
        return eval_scope(decoded[0])
    return tenant_scope(decoded[0]) if kind == "tenant" else batch_scope(decoded[0])


def readable_scope(scope: str) -> str:
    """A scope as operators read and type it (`parse_scope` reads it back): names decoded.

    Only what `parse_scope` would misread stays escaped: a `%` and, in a user or end-user scope, a `/`.
    """
    kind, _, rest = scope.partition(":")
    parts = rest.split("/") if kind in _PAIRED else [rest]
    shown = []
    for part in parts:
        name = keys.name_of_key_part(part).replace("%", "%25")
        shown.append(name.replace("/", "%2F") if kind in _PAIRED else name)
    return f"{kind}:{'/'.join(shown)}"


def check_scope(scope: str) -> None:
    """A scope as `user_scope` & co. build it: its names encoded, one `/` in a user or end-user scope."""
    kind, _, rest = scope.partition(":")
    paired = kind in _PAIRED
    names = rest.split("/") if paired else [rest]
    if not scope.startswith(KINDS) or not all(names) or len(names) != (2 if paired else 1):
        raise ValueError(
            f"not a budget scope: {scope!r}; use {_SCOPE_FORMS}"
            " (build it with user_scope, end_user_scope, tenant_scope, batch_scope or parse_scope)"
        )
