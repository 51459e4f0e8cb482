"""The one URL masker and key redactor, for provider URLs and service DSNs alike."""

from __future__ import annotations

import pytest

from router_core.redact import mask_url, redact_keys
from storage.errors import ServiceUnavailableError


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # provider base URLs and the request URLs of their errors
        (
            "http://user:s3cret@llm.internal.test:8000/v1/chat",
            "http://user:***@llm.internal.test:8000/v1/chat",
        ),
        ("https://proxy:p%40ss@Gateway.example/v1?x=1#f", "https://proxy:***@Gateway.example/v1?x=1#f"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("https://user@api.example/v1", "https://user@api.example/v1"),
        # Redis and database DSNs
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://default:pw@cache.example:6380", "rediss://default:***@cache.example:6380"),
        ("postgresql+asyncpg://u:p@ss@db.example/routeq", "postgresql+asyncpg://u:***@db.example/routeq"),
        ("postgresql+asyncpg://u:pw@[::1]:5432/x", "postgresql+asyncpg://u:***@[::1]:5432/x"),
        ("postgresql+asyncpg://u:@db/x", "postgresql+asyncpg://u:***@db/x"),
        ("sqlite+aiosqlite:///./routeq.db", "sqlite+aiosqlite:///./routeq.db"),
        ("(unset)", "(unset)"),
    ],
)
def test_only_the_password_is_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_storage_errors_name_the_url_without_its_password() -> None:
    error = ServiceUnavailableError("Redis", "redis://:hunter2@10.0.0.5:6379/0", "refused", "Start Redis.")
    assert error.url == "redis://:***@10.0.0.5:6379/0"
    assert "hunter2" not in str(error)


def test_keys_are_cut_to_their_kind() -> None:
    assert redact_keys("Bearer rq-XyZ98765432 and sk-ant-api03-QwErTy12345") == "Bearer *** and sk-ant-***"
