"""Result lines in the OpenAI Batch output shape, plus routeq's routing metadata.

    {"id": ..., "custom_id": ..., "response": {"status_code": 200, "request_id": ..., "body": {...}},
     "error": null, "routeq": {"status", "deployment", "attempts", "failovers", "cost_usd", ...}}

A failed or cancelled job has `"response": null` and `"error": {"code", "message"}`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

from storage.jobs import JobRecord, JobStatus

__all__ = ["completion_body", "output_line", "routing_metadata", "write_results"]


def completion_body(job: JobRecord) -> dict[str, Any]:
    """A succeeded job's answer as an OpenAI `chat.completion` object."""
    result = job.result or {}
    usage = result.get("usage") or {}
    created = job.finished_at or job.created_at
    return {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion",
        "created": int(created.timestamp()),
        "model": result.get("model") or job.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.get("content", "")},
                "finish_reason": result.get("finish_reason") or "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.get("input_tokens", 0),
            "completion_tokens": usage.get("output_tokens", 0),
            "total_tokens": usage.get("input_tokens", 0) + usage.get("output_tokens", 0),
        },
    }


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
    }


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
    return {"id": job.id, "custom_id": job.custom_id, "response": response, "error": error, "routeq": routing}


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
