"""`arq workers.WorkerSettings` works: the class arq's command line loads is built from ROUTEQ_* settings."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from arq.worker import create_worker, get_kwargs

import workers
from storage.bus.queue import JOB_FUNCTION
from storage.settings import Settings


def test_worker_settings_class_for_arq_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEQ_REDIS_URL", "redis://:pw@127.0.0.1:6379/3")
    monkeypatch.setenv("ROUTEQ_WORKER_CONCURRENCY", "300")
    monkeypatch.setenv("ROUTEQ_JOB_TIMEOUT_S", "120")
    kwargs = cast(dict[str, Any], get_kwargs(workers.WorkerSettings))  # arq types the values oddly
    assert kwargs["max_jobs"] == 300
    assert kwargs["queue_read_limit"] >= kwargs["max_jobs"]
    assert kwargs["poll_delay"] <= 0.1
    assert kwargs["redis_settings"].database == 3
    assert kwargs["redis_settings"].retry_on_timeout is True
    # arq's Worker takes the current event loop (making one if there is none): give it one that is
    # closed here, or its unclosed socket pair surfaces as a warning in whichever test runs next.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = create_worker(workers.WorkerSettings, handle_signals=False)
        assert list(worker.functions) == [JOB_FUNCTION]
        assert worker.in_progress_timeout_s == 130  # job timeout + 10 s: how soon a crashed job re-runs
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_unknown_attribute_is_still_an_error() -> None:
    with pytest.raises(AttributeError):
        _ = workers.NoSuchThing


def test_fleet_env_puts_another_process_on_the_same_redis_database_and_queue() -> None:
    """What `Settings.fleet_env` gives, read back by a process's own `Settings()`, is the same fleet."""
    ours = Settings(
        _env_file=None,
        redis_url="redis://:pw@127.0.0.1:6379/3",
        database_url="postgresql+asyncpg://u@h/db",
        queue_name="fleet:q",
    )
    env = ours.fleet_env()
    assert env == {
        "ROUTEQ_REDIS_URL": "redis://:pw@127.0.0.1:6379/3",
        "ROUTEQ_DATABASE_URL": "postgresql+asyncpg://u@h/db",
        "ROUTEQ_QUEUE_NAME": "fleet:q",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        theirs = Settings(_env_file=None)
    assert (theirs.redis_url, theirs.database_url, theirs.queue_name) == (
        ours.redis_url,
        ours.database_url,
        ours.queue_name,
    )
    with pytest.raises(ValueError, match="embedded"):
        Settings(_env_file=None, redis_url=None).fleet_env()
