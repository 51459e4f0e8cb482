"""Every Redis key and channel routeq uses, with its type and lifetime, in one place.

arq's own keys (`arq:job:<id>`, `arq:in-progress:<id>`, `arq:retry:<id>`, `arq:result:<id>`) sit
beside these; the queue itself is the sorted set named by `Settings.queue_name`.

| key                          | type    | lifetime                      | written by            |
|------------------------------|---------|-------------------------------|-----------------------|
| routeq:events:<batch_id>     | stream  | event_retention_s after last  | workers, producer     |
| routeq:progress:<batch_id>   | hash    | event_retention_s after last  | submit, events script |
| routeq:published:<job_id>    | string  | event_retention_s             | events script         |
| routeq:job-done:<job_id>     | pub/sub | -                             | events script         |
| routeq:workers               | hash    | entry removed on shutdown     | worker start/stop     |
"""

from __future__ import annotations

__all__ = [
    "ARQ_JOB_PREFIX",
    "WORKERS",
    "batch_events",
    "batch_progress",
    "job_done_channel",
    "job_published",
]

PREFIX = "routeq:"
ARQ_JOB_PREFIX = "arq:job:"  # arq.constants.job_key_prefix, written by our bulk enqueue too
WORKERS = PREFIX + "workers"


def batch_events(batch_id: str) -> str:
    """The batch's event stream: job.succeeded/failed, batch.progress, batch.completed..."""
    return f"{PREFIX}events:{batch_id}"


def batch_progress(batch_id: str) -> str:
    """Counters of the batch (total, done, succeeded, failed, cancelled), changed only by Lua."""
    return f"{PREFIX}progress:{batch_id}"


def job_published(job_id: str) -> str:
    """Set once the job's terminal event is on the stream: a redelivered job never publishes twice."""
    return f"{PREFIX}published:{job_id}"


def job_done_channel(job_id: str) -> str:
    """Pub/sub channel told the moment the job's terminal event is published (for `wait`)."""
    return f"{PREFIX}job-done:{job_id}"
