"""Webhooks: what routeq tells a tenant's endpoints, and how each message is signed.

    model.py    the vocabulary: EventType, DeliveryState, Endpoint, Delivery, DeliveryAttempt; event
                ids (stable across retries) and bodies; check_url (a clear error for a bad URL)
    signing.py  Standard Webhooks signatures: whsec_ secrets, webhook-id / -timestamp / -signature

The outbox itself (endpoints, deliveries, attempts) is SQL: `storage/sql/webhooks.py`. The worker
side sends due deliveries: `workers/webhooks.py`.
"""

from storage.webhooks.model import (
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Endpoint,
    EventType,
    check_events,
    check_url,
)
from storage.webhooks.signing import new_secret, sign, signed_headers

__all__ = [
    "Delivery",
    "DeliveryAttempt",
    "DeliveryState",
    "Endpoint",
    "EventType",
    "check_events",
    "check_url",
    "new_secret",
    "sign",
    "signed_headers",
]
