"""Secrets out of text before it is logged, stored or shown: URL passwords and API keys.

The one place these rules live: provider errors (`router_core.providers.errors`) and storage
errors, CLI output and the ops API (Redis and database URLs) all go through it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["mask_url", "redact_keys"]

# Secrets a provider may echo back in an error ("Incorrect API key provided: sk-proj-...") or a
# proxy in a URL: OpenAI/Anthropic/Groq/xAI/Google key shapes, routeq's own keys, bearer tokens.
_KEY_PATTERN = re.compile(
    r"(?P<kind>sk-ant-|sk-proj-|sk-|sk_|rq-|gsk_|xai-|AIza|Bearer\s+)[A-Za-z0-9_\-\*\.]{6,}"
)


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***`, everything else kept as written.

    Works for provider URLs (`https://user:pw@proxy:8080/v1`) and service DSNs
    (`redis://:pw@host:6379/0`, `postgresql+asyncpg://user:pw@host/db`); a URL without a password
    (or not a URL at all, such as `(unset)`) comes back unchanged.
    """
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not (at and colon):
        return url
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def redact_keys(text: str) -> str:
    """`text` with anything shaped like an API key cut to its kind (`sk-***`): errors are stored."""
    return _KEY_PATTERN.sub(lambda m: f"{m['kind']}***", text)
