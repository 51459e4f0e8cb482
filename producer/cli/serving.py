"""`routeq serve` (the HTTP API on uvicorn) and `routeq keys` (API keys: create, list, revoke, limit:
rate limits and allowed models).

FastAPI and uvicorn are imported by `serve` when it runs: every other command goes without them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from producer.cli._common import (
    JsonFlag,
    execute,
    fail,
    finite_usd,
    load_settings,
    optional_redis,
    print_json,
    with_redis,
    with_store,
)
from storage.errors import ServiceUnavailableError
from storage.logs import configure_logging, tune_gc

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from storage.settings import Settings
    from storage.sql.api_keys import ApiKey
    from storage.sql.store import Store

__all__ = ["keys_app", "serve"]

console = Console()
err_console = Console(stderr=True)
keys_app = typer.Typer(help="API keys of the HTTP API: each bound to a tenant and user.")

RpmOpt = Annotated[int | None, typer.Option(min=1, help="Requests per minute, fleet-wide.")]
TpmOpt = Annotated[
    int | None, typer.Option(min=1, help="Tokens per minute (prompt estimate + max_tokens), fleet-wide.")
]
BurstOpt = Annotated[int | None, typer.Option(min=1, help="Requests at once (default: one minute's rpm).")]
AllowModelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-model",
        help="A model the key may use (repeatable): a deployment id, a model name or "
        "<provider>/<model>, with * wildcards (openai/*). Without any: every model.",
    ),
]

Host = Annotated[str, typer.Option(help="Address to bind (0.0.0.0 to accept other machines).")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]


def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    dev: Annotated[
        bool, typer.Option("--dev", help="No API keys: every caller is ROUTEQ_TENANT/ROUTEQ_USER, admin.")
    ] = False,
) -> None:
    """Serve the HTTP API: OpenAI-compatible chat completions and Batch API, jobs, events, metrics."""
    from producer.api.app import ApiServer, api_config, create_app  # noqa: PLC0415 - `serve` only

    settings = load_settings()
    if dev:
        settings = settings.model_copy(update={"api_dev_mode": True})
    execute(_preflight(settings))
    if settings.api_dev_mode:
        err_console.print(
            "[yellow]dev mode: no API keys are checked; every caller acts as "
            f"{settings.tenant}/{settings.user} with admin rights. Never expose this.[/yellow]"
        )
    console.print(f"routeq API on http://{host}:{port} (dashboard at /ui, docs at /docs)")
    configure_logging(settings.log_format)  # uvicorn's lines too (log_config=None: no config of its own)
    app = create_app(settings)
    tune_gc(settings.gc_threshold)  # the imports and the app are made: what they left alive is frozen
    config = api_config(
        app,
        settings,
        host=host,
        port=port,
        log_level="info",
        access_log=settings.api_access_log,
        proxy_headers=False,
    )
    server = ApiServer(config, app.state.stopping)
    server.run()  # on SIGTERM: waiting requests answer within ROUTEQ_SHUTDOWN_GRACE_S (ApiServer)
    if not server.started:  # as `uvicorn.run`: a server that could not start (its port taken) exits 3
        sys.exit(3)


async def _preflight(settings: Settings) -> None:
    """Fail with one clear line (exit 2) before uvicorn starts when Redis, SQL or the catalog is wrong."""
    from router_core.catalog import load_catalog  # noqa: PLC0415 - start-up: imported on use
    from storage.connections import connect_redis  # noqa: PLC0415 - start-up: imported on use
    from storage.sql.store import Store  # noqa: PLC0415 - start-up: imported on use

    if settings.redis_url is None:
        raise ServiceUnavailableError.redis_unset(
            "The API enqueues into the workers' Redis: set ROUTEQ_REDIS_URL. To try it all in one "
            "process, use `routeq run FILE --serve 8000`."
        )
    load_catalog(settings.catalog_path)
    redis = await connect_redis(settings)
    await redis.aclose()
    store = await Store.open(settings.database_url)
    await store.close()


@keys_app.command("create")
def create_key(
    *,
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    user: Annotated[str, typer.Option(help="The user the key acts for (spend is counted per user).")],
    name: Annotated[str | None, typer.Option(help="A label to recognise the key by.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Administers its own tenant.")] = False,
    operator: Annotated[
        bool,
        typer.Option(
            "--operator",
            help="The fleet's operator: every tenant's analytics, forcing deployments (implies --admin).",
        ),
    ] = False,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget", min=0, callback=finite_usd, help="The user's spend cap in USD (fleet-wide)."
        ),
    ] = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    burst: BurstOpt = None,
    allow_model: AllowModelOpt = None,
) -> None:
    """Make a key and print its secret once: only its SHA-256 is stored."""
    from storage.fleet.ratelimits import RateLimits  # noqa: PLC0415 - start-up: imported on use
    from storage.sql.store import Store  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()
    limits = RateLimits(rpm, tpm, burst)
    models = _checked_models(settings, allow_model) if allow_model else None

    async def go() -> str:
        store = await Store.open(settings.database_url)
        try:
            key, secret = await store.api_keys.create(
                tenant=tenant,
                user_id=user,
                name=name,
                admin=admin,
                operator=operator,
                limits=limits,
                allowed_models=models,
            )
        finally:
            await store.close()
        if budget is not None:
            await _set_user_budget(settings, tenant, user, budget)
        rights = " (operator)" if key.operator else " (admin)" if key.admin else ""
        console.print(f"key {key.id} for {escape(tenant)}/{escape(user)}{rights}", emoji=False)
        if models is not None:
            console.print(f"allowed models: {_models_text(key.allowed_models)}", markup=False)
        return secret

    secret = execute(go())
    console.print("secret (shown once, store it now):")
    print(secret)


@keys_app.command("limit")
def limit_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...), as `routeq keys list` shows.")],
    *,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    burst: BurstOpt = None,
    allow_model: AllowModelOpt = None,
    allow_all_models: Annotated[
        bool, typer.Option("--allow-all-models", help="Lift the key's model limit: every model.")
    ] = False,
) -> None:
    """Set a key's rate limits, fleet-wide, from its next request; a limit left out is lifted.

    With --allow-model (repeatable) or --allow-all-models, set the models it may use instead; its
    rate limits then change only if --rpm, --tpm or --burst is given too.
    """
    from storage.fleet.ratelimits import RateLimits  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()
    if allow_model and allow_all_models:
        raise fail("give --allow-model or --allow-all-models, not both")
    models_given = bool(allow_model) or allow_all_models
    models = _checked_models(settings, allow_model) if allow_model else None
    rates_given = any(value is not None for value in (rpm, tpm, burst)) or not models_given
    limits = RateLimits(rpm, tpm, burst)

    async def change(store: Store) -> ApiKey:
        key = await store.api_keys.set_limits(key_id, limits) if rates_given else None
        if models_given:
            key = await store.api_keys.set_allowed_models(key_id, models)
        assert key is not None
        await _tell_servers(settings)
        return key

    key = execute(with_store(settings, change))
    if rates_given:
        console.print(f"key {key.id}: {_limits_text(key.limits.as_json())}", markup=False)
    if models_given:
        console.print(f"key {key.id}: allowed models: {_models_text(key.allowed_models)}", markup=False)


async def _tell_servers(settings: Settings) -> None:
    """Announce a committed key change to the API servers, which keep the keys they looked up
    (storage.fleet.key_cache): each reads them from SQL again on its next request. Without Redis
    the change still holds in SQL; a server then sees it when its kept copy expires."""
    from redis.exceptions import RedisError  # noqa: PLC0415 - start-up: imported on use

    from storage.fleet.key_cache import KEY_CACHE_TTL_S, announce_key_change  # noqa: PLC0415 - on use

    try:
        async with optional_redis(settings) as redis:
            if redis is not None:
                await announce_key_change(redis)
    except (ServiceUnavailableError, RedisError, OSError) as exc:
        err_console.print(
            f"[yellow]warning: the change is made, but the API servers could not be told through Redis "
            f"({escape(str(exc))}): one that used this key may go on as before for up to "
            f"{KEY_CACHE_TTL_S:g} s[/yellow]"
        )


def _checked_models(settings: Settings, patterns: list[str]) -> list[str]:
    """The patterns, each naming some chat deployment of the catalog (else a one-line error)."""
    from producer.cli.live_catalog import live_or_file_catalog  # noqa: PLC0415 - start-up: imported on use
    from router_core.policy import unmatched_patterns  # noqa: PLC0415 - start-up: imported on use

    catalog = live_or_file_catalog(settings)  # what the fleet routes with
    patterns = [p.strip() for p in patterns]
    if "" in patterns:
        raise fail("--allow-model: an empty name allows nothing; give a deployment id, model or pattern")
    unknown = unmatched_patterns(patterns, catalog)
    if unknown:
        ids = ", ".join(d.id for d in catalog.chat_deployments())
        raise fail(
            f"--allow-model {unknown[0]!r} names no chat deployment in the catalog (deployments: {ids})"
        )
    return patterns


def _models_text(models: tuple[str, ...] | None) -> str:
    return "every model" if models is None else ", ".join(models)


@keys_app.command("tenant-limit")
def limit_tenant(
    tenant: Annotated[str, typer.Argument(help="The tenant: its limits hold over all its keys.")],
    *,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    burst: BurstOpt = None,
) -> None:
    """Set a tenant's rate limits over all its keys (besides each key's own); a limit left out is lifted."""
    from storage.fleet.ratelimits import RateLimits  # noqa: PLC0415 - start-up: imported on use

    limits = RateLimits(rpm, tpm, burst)
    execute(with_store(load_settings(), lambda store: store.api_keys.set_tenant_limits(tenant, limits)))
    console.print(f"tenant {tenant}: {_limits_text(limits.as_json())}", markup=False)


def _limits_text(limits: dict[str, int | None]) -> str:
    shown = [f"{name} {value}" for name, value in limits.items() if value is not None]
    return ", ".join(shown) or "no rate limits"


async def _set_user_budget(settings: Settings, tenant: str, user: str, budget: float) -> None:
    from storage.fleet.budgets import Budgets, user_scope  # noqa: PLC0415 - start-up: imported on use

    async def set_cap(redis: Redis) -> None:
        budgets = Budgets(redis, default_user_cap_usd=settings.default_user_budget_usd)
        await budgets.set_cap(user_scope(tenant, user), budget)

    await with_redis(settings, set_cap, hint="Budgets live in the fleet's Redis: set it.")
    console.print(f"budget of {tenant}/{user}: ${budget:.4f}")


@keys_app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every key (never a secret): id, prefix, tenant, user, rights, created, revoked."""
    from storage.sql.store import Store  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()

    async def go() -> None:
        store = await Store.open(settings.database_url)
        try:
            found = await store.api_keys.list(tenant=tenant)
        finally:
            await store.close()
        if as_json:
            print_json({"keys": [_key_view(k) for k in found]})
            return
        # Plain aligned columns, never cut or folded to the terminal's width: ids must stay whole
        # to be copied into `routeq keys revoke` (a rich table truncated them on narrow terminals).
        rows = [_COLUMNS, *(_cells(k) for k in found)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        for row in rows:
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            console.print(line.rstrip(), soft_wrap=True, markup=False, emoji=False, highlight=False)

    execute(go())


_COLUMNS = ("id", "prefix", "rights", "tenant", "user", "name", "models", "created", "revoked")


def _key_view(key: ApiKey) -> dict[str, Any]:
    """One key as `routeq keys list --json` prints it (its prefix, never its secret)."""
    return {
        "id": key.id,
        "prefix": key.prefix,
        "tenant": key.tenant,
        "user": key.user_id,
        "name": key.name,
        "admin": key.admin,
        "operator": key.operator,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "limits": key.limits.as_json(),
        "allowed_models": None if key.allowed_models is None else list(key.allowed_models),
    }


def _cells(key: ApiKey) -> tuple[str, ...]:
    """One key's line of `routeq keys list`, in `_COLUMNS` order."""
    return (
        key.id,
        key.prefix + "…",
        "operator" if key.operator else "admin" if key.admin else "-",
        key.tenant,
        key.user_id,
        key.name or "-",
        "all" if key.allowed_models is None else ",".join(key.allowed_models),
        f"{key.created_at:%Y-%m-%d %H:%M}",
        "-" if key.revoked_at is None else f"{key.revoked_at:%Y-%m-%d %H:%M}",
    )


@keys_app.command("revoke")
def revoke_key(key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")]) -> None:
    """Revoke a key: its secret stops working at once."""
    from storage.sql.store import Store  # noqa: PLC0415 - start-up: imported on use

    settings = load_settings()

    async def go() -> None:
        store = await Store.open(settings.database_url)
        try:
            key = await store.api_keys.revoke(key_id)
        finally:
            await store.close()
        await _tell_servers(settings)
        console.print(f"revoked {key.id} ({key.tenant}/{key.user_id})")

    execute(go())
