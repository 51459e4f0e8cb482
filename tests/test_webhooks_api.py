"""Webhooks through the HTTP API and a live worker, on both backends: endpoints registered with an
admin key, a Batch API batch carrying `metadata.webhook_url`, the worker's own sender delivering
(retrying a receiver that fails first), and the deliveries with their attempts read back.

The receivers are real servers on 127.0.0.1; signatures are verified with `standardwebhooks`.
"""

from __future__ import annotations

import httpx2
from standardwebhooks import Webhook

from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend
from tests.fleet import until
from tests.test_api_batches import finished, jsonl, line
from tests.webhook_receiver import Receiver


async def http(api: LiveApi, tenant: str, *, admin: bool = False) -> httpx2.AsyncClient:
    secret = await api.key(tenant, admin=admin)
    return httpx2.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}, timeout=15)


def refused(response: httpx2.Response, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return str(error["message"])


async def test_endpoints_a_batch_url_and_deliveries_through_the_api(backend: Backend) -> None:
    async with (
        # The worker's sender looks often and retries at once: the test waits on receivers, not time.
        serve_api(backend, webhook_poll_s=0.02, webhook_backoff_s=0.0) as api,
        Receiver() as endpoint_hook,
        Receiver([500, 200]) as batch_hook,
        await http(api, "acme", admin=True) as admin,
        await http(api, "acme") as member,
        await http(api, "other", admin=True) as other,
    ):
        bad = await admin.post("/v1/webhooks", json={"url": "mailto:ops@example.com"})
        assert "must start with http:// or https://" in refused(bad, 400, "url")
        bad = await admin.post("/v1/webhooks", json={"url": endpoint_hook.url, "events": ["batch.done"]})
        assert "unknown event type 'batch.done'" in refused(bad, 400, "events")
        refused(await member.post("/v1/webhooks", json={"url": endpoint_hook.url}), 403)

        made = await admin.post(
            "/v1/webhooks", json={"url": endpoint_hook.url, "events": ["batch.completed"]}
        )
        assert made.status_code == 200, made.text
        endpoint = made.json()
        assert endpoint["secret"].startswith("whsec_")
        listed = (await member.get("/v1/webhooks")).json()["data"]
        assert [(e["id"], e["events"], "secret" in e) for e in listed] == [
            (endpoint["id"], ["batch.completed"], False)
        ]
        assert (await other.get("/v1/webhooks")).json()["data"] == []

        sdk = api.openai(await api.key("acme"))
        upload = await sdk.files.create(file=("in.jsonl", jsonl([line("q-1", "Hi?")])), purpose="batch")
        with_bad_url = await admin.post(
            "/v1/batches",
            json={
                "input_file_id": upload.id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"webhook_url": "https://"},
            },
        )
        assert "needs a host" in refused(with_bad_url, 400, "metadata.webhook_url")
        batch = await sdk.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"webhook_url": batch_hook.url},
        )
        assert (await finished(sdk, batch.id)).status == "completed"
        await until(
            lambda: len(batch_hook.received) == 2 and len(endpoint_hook.received) == 1,
            timeout_s=15,
            what="the batch event at both receivers (the batch's URL answering 500 first)",
        )

        tenant_secret = (await admin.get("/v1/webhooks/secret")).json()["secret"]
        assert Webhook(tenant_secret).verify(batch_hook.received[1].body, batch_hook.received[1].headers)
        event = Webhook(endpoint["secret"]).verify(
            endpoint_hook.received[0].body, endpoint_hook.received[0].headers
        )
        assert (event["type"], event["data"]["id"]) == ("batch.completed", batch.id)

        async def both_delivered() -> bool:
            page = (await member.get("/v1/webhooks/deliveries", params={"batch_id": batch.id})).json()
            return [d["state"] for d in page["data"]] == ["delivered", "delivered"]

        await until(both_delivered, timeout_s=15, what="both deliveries recorded as delivered")
        page = (await member.get("/v1/webhooks/deliveries", params={"batch_id": batch.id})).json()
        by_url = {d["url"]: d for d in page["data"]}
        retried = by_url[batch_hook.url]
        assert [(a["attempt"], a["status_code"]) for a in retried["attempts"]] == [(1, 500), (2, 200)]
        assert retried["attempts"][0]["error"] == "HTTP 500"
        assert by_url[endpoint_hook.url]["endpoint_id"] == endpoint["id"]
        assert (await other.get("/v1/webhooks/deliveries")).json()["data"] == []
        refused(await other.get(f"/v1/webhooks/deliveries/{retried['id']}"), 404, "webhook_delivery_id")
        failed = await member.get("/v1/webhooks/deliveries", params={"state": "failed"})
        assert failed.json()["data"] == []

        refused(await member.post(f"/v1/webhooks/deliveries/{retried['id']}/retry"), 403)
        again = await admin.post(f"/v1/webhooks/deliveries/{retried['id']}/retry")
        assert "is delivered: only a failed one is sent again" in refused(again, 409)

        gone = await admin.delete(f"/v1/webhooks/{endpoint['id']}")
        assert gone.json() == {"object": "webhook_endpoint.deleted", "id": endpoint["id"], "deleted": True}
        assert (await member.get("/v1/webhooks")).json()["data"] == []
        refused(await admin.delete(f"/v1/webhooks/{endpoint['id']}"), 404, "webhook_endpoint_id")
