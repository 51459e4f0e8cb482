"""The HTTP side of the provider SDKs, parsing each request URL once.

For every call the openai SDK parses its request URL (`_prepare_url`), turns it back into a string
and httpx2 parses that again (`BaseClient._merge_url`: `urlparse`, its regular expressions and
percent-quoting): about 4% of a worker's CPU, for a URL that is the same for every call to a
deployment. The clients made by `providers.factory` keep the URLs they have parsed (httpx2's `URL`
is immutable, so one object serves every request): `AsyncClient` here, the factory's `AioHttpClient`
(the openai SDK's aiohttp-backed client, for real network calls) and `OpenAIClient`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2

__all__ = ["AsyncClient", "ParsedUrls"]

# URLs kept per client; a client sends to a handful (one per endpoint of its deployment).
_KEPT = 256


class ParsedUrls:
    """The URLs a client has parsed, by the string given; forgotten when its base URL changes (a
    relative URL's parse depends on it)."""

    def __init__(self) -> None:
        self._base: object = None
        self._kept: dict[str, httpx2.URL] = {}

    def parse(self, base: object, url: str, parse: Callable[[str], httpx2.URL]) -> httpx2.URL:
        """`parse(url)`, made once per URL string while `base` is the client's base URL."""
        if base is not self._base or len(self._kept) >= _KEPT:
            self._base = base
            self._kept.clear()
        parsed = self._kept.get(url)
        if parsed is None:
            parsed = self._kept[url] = parse(url)
        return parsed


class AsyncClient(httpx2.AsyncClient):
    """`httpx2.AsyncClient` remembering the URLs it merged into its base URL, and merging its
    headers with a request's in one pass."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._merged = ParsedUrls()

    def _merge_url(self, url: httpx2.URL | str) -> httpx2.URL:
        if isinstance(url, str):
            return self._merged.parse(self.base_url, url, super()._merge_url)
        return super()._merge_url(url)

    def _merge_headers(self, headers: Any = None) -> httpx2.Headers:
        """The client's headers, less those the request sets, then the request's: what httpx2's
        merge gives (`Headers.update`), which looks each of the request's dozen headers up and
        removes it by a walk of the list (a twentieth of an SDK call's CPU)."""
        if isinstance(headers, list):  # (name, value) pairs, as the SDKs give them: read once
            given: list[tuple[Any, Any]] = headers
        else:
            given = httpx2.Headers(headers).raw
        taken = {_lowered(key) for key, _ in given}
        kept = [(key, value) for key, value in self.headers.raw if _lowered(key) not in taken]
        return httpx2.Headers(kept + given)


def _lowered(name: str | bytes) -> str:
    """A header name as compared: lower case (latin-1, as bytes may hold anything)."""
    return (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
