"""`fan_out`: `n` answers from a deployment without native `n`, as `n` calls merged into one reply."""

from __future__ import annotations

import asyncio

from router_core.chat import Choice
from router_core.errors import ProviderError
from router_core.models import ChatRequest, Usage
from router_core.providers.base import Provider, ProviderReply

__all__ = ["fan_out"]


async def fan_out(
    provider: Provider, request: ChatRequest, max_tokens: int, timeout_s: float
) -> ProviderReply:
    """`n` answers from a deployment without native `n`: `n` calls at once, merged as one reply.

    If any call fails, the ones that answered were still billed: the error carries their usage.
    """
    single = request.model_copy(update={"n": None})
    replies = await asyncio.gather(
        *(
            provider.complete(single, max_tokens=max_tokens, timeout_s=timeout_s)
            for _ in range(request.choices)
        ),
        return_exceptions=True,
    )
    answered = [r for r in replies if isinstance(r, ProviderReply)]
    usage = sum((r.usage for r in answered), Usage())
    for r in replies:
        if isinstance(r, ProviderError):
            r.billed = (r.billed or Usage()) + usage if answered else r.billed
            raise r
        if isinstance(r, BaseException):
            raise r
    choices = tuple(
        Choice(
            index=i,
            message=r.choices[0].message,
            finish_reason=r.finish_reason,
            logprobs=r.choices[0].logprobs,
        )
        for i, r in enumerate(answered)
    )
    # Every call arrived at least the least of their held times before the last reply, when every
    # provider said how long it held its call.
    held = [r.server_s for r in answered if r.server_s is not None]
    return ProviderReply(
        choices=choices,
        usage=usage,
        model=answered[0].model,
        simulated=answered[0].simulated,
        server_s=min(held) if len(held) == len(answered) else None,
    )
