"""How big one request may be: its messages' text and their number.

Every place a request enters (JSONL lines, the HTTP API, the Python client) checks it against the
same `RequestLimits` before anything is stored, so one oversized request is refused by name instead
of filling the database, a Redis stream and every worker's memory. The limits come from settings
(`ROUTEQ_MAX_PROMPT_BYTES`, `ROUTEQ_MAX_MESSAGES`); the defaults here are theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

from router_core.models import ChatRequest

__all__ = ["DEFAULT_MAX_LINE_BYTES", "DEFAULT_MAX_MESSAGES", "DEFAULT_MAX_PROMPT_BYTES", "RequestLimits"]

DEFAULT_MAX_PROMPT_BYTES = 1024 * 1024
"""A megabyte of text: about 260,000 tokens, past every context window in the demo catalog."""
DEFAULT_MAX_MESSAGES = 4096
DEFAULT_MAX_LINE_BYTES = 4 * DEFAULT_MAX_PROMPT_BYTES
"""The longest JSONL line read (`ROUTEQ_MAX_LINE_BYTES`): room for a request at the default text
limit with its JSON escapes and other fields."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The largest request routeq accepts.

    Attributes:
        max_prompt_bytes: UTF-8 bytes of all the messages' text together.
        max_messages: Messages in one request.
    """

    max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES
    max_messages: int = DEFAULT_MAX_MESSAGES

    def problems(self, request: ChatRequest) -> list[tuple[str, str]]:
        """What in `request` is over a limit, as (field, message) pairs; empty when it fits."""
        found: list[tuple[str, str]] = []
        count = len(request.messages)
        if count > self.max_messages:
            found.append(
                ("messages", f"{count} messages; the limit is {self.max_messages} (ROUTEQ_MAX_MESSAGES)")
            )
        size = sum(_utf8_length(m.text()) for m in request.messages)
        if size > self.max_prompt_bytes:
            found.append(
                (
                    "messages",
                    f"the messages' text is {size} bytes; the limit is {self.max_prompt_bytes} "
                    "(ROUTEQ_MAX_PROMPT_BYTES)",
                )
            )
        return found


def _utf8_length(text: str) -> int:
    # surrogatepass: a lone surrogate is refused elsewhere with its own reason, not here.
    return len(text.encode("utf-8", errors="surrogatepass"))
