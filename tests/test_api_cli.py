"""`routeq serve` refuses to start without its services, naming them; `routeq keys` makes, lists, revokes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from producer.cli import app
from storage.apikeys import ApiKeys
from storage.store import Store

runner = CliRunner()


def test_serve_without_redis_says_which_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ROUTEQ_REDIS_URL", raising=False)
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/k.db")
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "ROUTEQ_REDIS_URL" in result.output
    assert "routeq run FILE --serve" in result.output


def test_serve_with_unreachable_redis_masks_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEQ_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "127.0.0.1:1" in result.output
    assert "hunter2" not in result.output


def test_keys_create_list_revoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", url)
    created = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--user", "ana", "--admin"])
    assert created.exit_code == 0, created.output
    secret = created.output.strip().splitlines()[-1]
    assert secret.startswith("rq-")
    assert len(secret) > 40

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0
    assert "acme" in listed.output
    assert secret not in listed.output.replace("\n", "")

    async def lookup() -> tuple[str | None, bool]:
        store = await Store.open(url)
        try:
            key = await ApiKeys(store).authenticate(secret)
            return (key.id if key else None), bool(key and key.admin)
        finally:
            await store.close()

    key_id, admin = asyncio.run(lookup())
    assert key_id is not None
    assert admin
    revoked = runner.invoke(app, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0
    assert asyncio.run(lookup())[0] is None
    assert runner.invoke(app, ["keys", "revoke", "key_nope"]).exit_code == 1
