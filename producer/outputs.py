"""Result lines in the OpenAI Batch output shape, plus routeq's routing metadata.

    {"id": ..., "custom_id": ..., "response": {"status_code": 200, "request_id": ..., "body": {...}},
     "error": null, "routeq": {"status", "deployment", "attempts", "failovers", "cost_usd", ...,
                               "cache_hit", "cache_source_job", "cache_similarity", "saved_usd",
                               "user", "metadata"}}

The body is a `chat.completion` with every choice the job got (`message` with `content`,
`tool_calls`, `refusal`; `logprobs`; `finish_reason`), and `routeq` also repeats the request's
`user` and `metadata`. A failed or cancelled job has `"response": null` and `"error": {"code",
"message"}`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable, Mapping
from pathlib import Path
from typing import Any

from storage.jobs import JobRecord, JobStatus

__all__ = [
    "cache_fields",
    "cache_state",
    "completion_body",
    "metadata_filter",
    "openai_choices",
    "openai_usage",
    "output_line",
    "routing_metadata",
    "strategy_fields",
    "write_results",
]


def completion_body(job: JobRecord) -> dict[str, Any]:
    """A succeeded job's answer as an OpenAI `chat.completion` object, every choice in it."""
    result = job.result or {}
    created = job.finished_at or job.created_at
    return {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion",
        "created": int(created.timestamp()),
        "model": result.get("model") or job.model,
        "choices": openai_choices(result),
        "usage": openai_usage(result),
    }


def openai_choices(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A stored result's choices as OpenAI shapes them: `index`, `message` (`role`, `content`,
    `refusal`, and `tool_calls` and the like when the model made them), `logprobs`, `finish_reason`.

    A result stored before routeq kept choices (no `choices`) is its one text answer.
    """
    stored = result.get("choices") or [
        {
            "index": 0,
            "message": {"role": "assistant", "content": result.get("content", "")},
            "finish_reason": result.get("finish_reason"),
        }
    ]
    return [
        {
            "index": choice.get("index", index),
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                **(choice.get("message") or {}),
            },
            "logprobs": choice.get("logprobs"),
            "finish_reason": choice.get("finish_reason") or "stop",
        }
        for index, choice in enumerate(stored)
    ]


def openai_usage(result: Mapping[str, Any]) -> dict[str, Any]:
    """A stored result's usage in the OpenAI shape, `completion_tokens_details.reasoning_tokens`
    included when the provider reported hidden reasoning."""
    usage = result.get("usage") or {}
    prompt, completion = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    shaped: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if usage.get("reasoning_tokens"):
        shaped["completion_tokens_details"] = {"reasoning_tokens": int(usage["reasoning_tokens"])}
    return shaped


def routing_metadata(job: JobRecord) -> dict[str, Any]:
    """How the job was routed: the `routeq` field of output lines and API answers."""
    return {
        "status": job.status.value,
        "deployment": job.deployment,
        "provider": (job.result or {}).get("provider"),
        "attempts": job.attempt_count or 0,
        "failovers": job.failovers or 0,
        "cost_usd": float(job.cost_usd or 0),
        "latency_ms": job.latency_ms,
        "simulated": (job.result or {}).get("simulated"),
        "batch_id": job.batch_id,
        "job_id": job.id,
        **strategy_fields(job),
        **cache_fields(job),
    }


def strategy_fields(job: JobRecord) -> dict[str, Any]:
    """The strategy the job was routed by and where it came from (`request`, `tenant`,
    `environment`, `default`; None for a job made without it: before routeq recorded it, or by the
    fleet itself, such as the eval beat's judge jobs)."""
    preferences = (job.request or {}).get("preferences") or {}
    strategy = (job.result or {}).get("plan_strategy") or preferences.get("strategy") or "balanced"
    return {"strategy": strategy, "strategy_source": preferences.get("strategy_source")}


def cache_fields(job: JobRecord) -> dict[str, Any]:
    """What the response cache did for the job: a hit names the job whose answer it reused, its
    similarity (semantic hits; None for exact ones) and the dollars it did not pay again."""
    return {
        "cache_hit": _hit(job),
        "cache_source_job": job.cache_source,
        "cache_similarity": job.cache_similarity,
        "saved_usd": float(job.saved_usd or 0),
    }


def cache_state(job: JobRecord) -> str:
    """`hit` (served from the cache), `miss` (looked up, then called and cached) or `off`."""
    if _hit(job):
        return "hit"
    return "miss" if job.cache_key is not None else "off"


def _hit(job: JobRecord) -> bool:
    return job.cache_source is not None or (job.result or {}).get("cache") is not None


def output_line(job: JobRecord) -> dict[str, Any]:
    """One output line for a finished job."""
    routing = routing_metadata(job)
    if job.status == JobStatus.SUCCEEDED:
        response: dict[str, Any] | None = {
            "status_code": 200,
            "request_id": job.id,
            "body": completion_body(job),
        }
        error = None
    else:
        response = None
        failure = job.failure
        error = {
            "code": failure.code.value if failure else job.status.value,
            "message": failure.message if failure else job.status.value,
        }
    routing |= {"user": job.end_user, "metadata": job.metadata}
    return {"id": job.id, "custom_id": job.custom_id, "response": response, "error": error, "routeq": routing}


def metadata_filter(filters: Iterable[str]) -> dict[str, str]:
    """`<key>=<value>` filters (`?metadata=` of the API, `--metadata` of `routeq results`) as the
    pairs a job's metadata must all hold. Each is split at its first `=`: a key holds no `=`, a
    value may.

    Raises:
        ValueError: a filter without `=`, or a key given twice with two values.
    """
    pairs: dict[str, str] = {}
    for given in filters:
        key, equals, value = given.partition("=")
        if not equals:
            raise ValueError(f"{given[:60]!r} is not <key>=<value>, such as team=search")
        if pairs.get(key, value) != value:
            raise ValueError(f"key {key[:60]!r} is given twice, with two values")
        pairs[key] = value
    return pairs


async def write_results(path: Path, jobs: AsyncIterable[JobRecord]) -> tuple[int, int]:
    """Write finished jobs as JSONL to `path`; returns (lines written, jobs not finished yet)."""
    written = pending = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        async for job in jobs:
            if not job.terminal:
                pending += 1
                continue
            out.write(json.dumps(output_line(job), ensure_ascii=False) + "\n")
            written += 1
    return written, pending
