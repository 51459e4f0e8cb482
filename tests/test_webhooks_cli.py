"""`routeq webhooks ...` and `routeq run --webhook URL`, embedded (SQLite file, in-process Redis and
worker): an endpoint registered and listed, a bad URL refused in one line, the run's batch event
delivered by the run's own worker to a real receiver on 127.0.0.1 and verified with `standardwebhooks`.

`routeq run` runs its own event loop, so the receiver serves from a thread with a loop of its own.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from producer.cli import app
from producer.cli.running import attempt_over
from storage.webhooks.model import Delivery, DeliveryState, EventType
from tests.test_cli_pipeline import runner, workdir
from tests.webhook_receiver import Receiver

__all__ = ["workdir"]  # the CLI tests' fixture: a clean directory and environment


@contextmanager
def receiver_in_thread() -> Iterator[Receiver]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    hook = Receiver()
    asyncio.run_coroutine_threadsafe(hook.__aenter__(), loop).result(5)
    try:
        yield hook
    finally:
        asyncio.run_coroutine_threadsafe(hook.__aexit__(None, None, None), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_endpoints_and_a_run_with_a_webhook(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEQ_WEBHOOK_POLL_S", "0.05")
    bad = runner.invoke(app, ["webhooks", "add", "ftp://example.com/hook"])
    assert bad.exit_code == 2
    assert "url: 'ftp://example.com/hook': a webhook URL must start with http:// or https://" in bad.output

    with receiver_in_thread() as endpoint_hook, receiver_in_thread() as batch_hook:
        added = runner.invoke(app, ["webhooks", "add", endpoint_hook.url, "--event", "batch.completed"])
        assert added.exit_code == 0, added.output
        endpoint_secret = added.output.split("signing secret (shown once, keep it): ")[1].split()[0]
        listed = json.loads(runner.invoke(app, ["webhooks", "list", "--json"]).output)["endpoints"]
        assert [(e["url"], e["events"]) for e in listed] == [(endpoint_hook.url, ["batch.completed"])]

        prompts = workdir / "prompts.jsonl"
        prompts.write_text('{"prompt": "Say hi"}\n{"prompt": "Say bye"}\n')
        ran = runner.invoke(app, ["run", str(prompts), "--webhook", batch_hook.url])
        assert ran.exit_code == 0, ran.output
        assert f"webhook batch.completed to {batch_hook.url}: delivered after 1 attempt (ok)" in ran.output
        assert f"webhook batch.completed to {endpoint_hook.url}: delivered after 1 attempt (ok)" in ran.output

    tenant_secret = runner.invoke(app, ["webhooks", "secret"]).output.strip()
    [to_batch] = batch_hook.received
    assert Webhook(tenant_secret).verify(to_batch.body, to_batch.headers)["type"] == "batch.completed"
    [to_endpoint] = endpoint_hook.received
    assert (
        Webhook(endpoint_secret).verify(to_endpoint.body, to_endpoint.headers)["data"]["request_counts"][
            "succeeded"
        ]
        == 2
    )

    shown = json.loads(runner.invoke(app, ["webhooks", "deliveries", "--json"]).output)["deliveries"]
    assert sorted(d["state"] for d in shown) == ["delivered", "delivered"]
    again = runner.invoke(app, ["webhooks", "retry", shown[0]["id"]])
    assert again.exit_code == 2
    assert "is delivered: only a failed one is sent again" in again.output
    bad_state = runner.invoke(app, ["webhooks", "deliveries", "--state", "lost"])
    assert bad_state.exit_code == 2
    assert "--state: 'lost' is not one of pending, delivered, failed" in bad_state.output


def test_the_run_reports_a_delivery_only_once_its_attempt_has_ended() -> None:
    """The claim counts an attempt when it starts: one still being sent (attempts 1, no status, no
    error) is not reported as `pending after 1 attempt (ok)` (it was, on a busy machine)."""
    now = datetime.now(UTC)
    sending = Delivery(
        id="whd_1",
        tenant="t",
        endpoint_id="whe_1",
        event_id="evt",
        event_type=EventType.BATCH_COMPLETED,
        batch_id="b",
        job_id=None,
        url="http://127.0.0.1:9/hook",
        state=DeliveryState.PENDING,
        attempts=1,
        next_attempt_at=now,
        created_at=now,
    )
    assert not attempt_over(sending)
    assert not attempt_over(replace(sending, attempts=0))
    assert attempt_over(replace(sending, state=DeliveryState.DELIVERED, last_status=200))
    assert attempt_over(replace(sending, last_status=503, last_error="HTTP 503"))  # due again later
    assert attempt_over(replace(sending, last_error="no answer within 10s (ROUTEQ_WEBHOOK_TIMEOUT_S)"))
    assert attempt_over(replace(sending, state=DeliveryState.FAILED, last_error="endpoint removed"))
