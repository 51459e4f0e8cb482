"""How routeq's processes set themselves up: log lines (text or JSON, each carrying the job it is
about) and the garbage collector.

    configure_logging(fmt)     the logging of `routeq worker`, `serve` and `run`: one root handler
    job_log_context(job=...)   while a job runs, every line logged in it carries job, batch, tenant
    bind_job_log(batch=...)    and deployment: fields learnt later in the run join the context
    tune_gc(threshold)         the collector of `routeq worker`, `serve` and `run`, once started

The context is a `ContextVar`: arq runs each job in an asyncio task of its own, and a task starts
with a copy of its parent's context, so two jobs running at once never see each other's fields and
no call site passes `extra=`. `JobContextFilter`, on the handler, copies the known fields onto every
record; the JSON formatter writes them as keys, the text formatter ignores them.

`--verbose` means "log every job": arq logs each job's start and end at INFO, which a busy worker
turns into thousands of lines a second. `configure_logging` gives arq's logger a class that logs
those lines at DEBUG, so they show with `--verbose` only, with routeq's own per-job lines (DEBUG as
well), and are not even made otherwise.

Workers and the producer both configure logging through here: neither may import the other.

The garbage collector. A worker allocates many short-lived container objects for every job
(models, dicts, futures, tasks). Reference counting frees nearly all of them at once; the cyclic
collector is for the few that form reference cycles. With Python's defaults it runs a young
collection every 700 net allocations and, every hundred of those, a full one that walks the whole
heap, the ~160,000 objects the imports of openai, SQLAlchemy, pydantic and FastAPI leave included:
in bench/throughput.py's pipeline it took about a fifth of the worker's CPU (1.9 s of collections
for 3,000 jobs, full ones about 0.1 s each).

`tune_gc`, called once the imports are done: one full collection (so no garbage is kept for good),
then `gc.freeze()`, which moves every object alive to the permanent generation that no collection
walks again, and a first-generation threshold of `ROUTEQ_GC_THRESHOLD` (default 20,000): the
same 3,000 jobs then spend about 0.3 s in collections. Garbage in reference cycles waits a little
longer for its collection (up to that many allocations); nothing else changes.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "CONFIGURED_LOGGERS",
    "CONTEXT_FIELDS",
    "HANDLER_NAME",
    "JobContextFilter",
    "LogFormat",
    "bind_job_log",
    "configure_logging",
    "job_log_context",
    "json_formatter",
    "tune_gc",
]

LogFormat = Literal["text", "json"]  # Settings.log_format

# The fields a job's lines carry, in the order JSON lines show them.
CONTEXT_FIELDS = ("job", "batch", "tenant", "deployment")
# The loggers `configure_logging` sets (besides the root logger, which gets its handler "routeq").
CONFIGURED_LOGGERS = ("routeq", "arq", "arq.worker", "uvicorn", "uvicorn.error", "uvicorn.access")
HANDLER_NAME = "routeq"

_context: ContextVar[dict[str, str] | None] = ContextVar("routeq_job_log", default=None)

# uvicorn adds a copy of each message with ANSI colours: no use in JSON.
_NOT_FIELDS = (*RESERVED_ATTRS, "color_message")


@contextmanager
def job_log_context(**fields: str | None) -> Iterator[None]:
    """Every line logged in this block (in this task and tasks it starts) carries `fields`.

    Fields given as None are left out; the context is restored on leaving, even on an error.
    """
    token = _context.set({**(_context.get() or {}), **_known(fields)})
    try:
        yield
    finally:
        _context.reset(token)


def bind_job_log(**fields: str | None) -> None:
    """Add fields learnt during a job (its batch once started, its deployment once routed).

    Outside a `job_log_context` block this does nothing: a field must never outlive its job.
    """
    known, current = _known(fields), _context.get()
    if current is not None:
        _context.set({**current, **known})


def _known(fields: dict[str, str | None]) -> dict[str, str]:
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"not a job log field: {sorted(unknown)}; use {', '.join(CONTEXT_FIELDS)}")
    return {name: value for name, value in fields.items() if value is not None}


class JobContextFilter(logging.Filter):
    """Copies the job's fields onto each record passing the handler (a record's own `extra` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


_ARQ_JOB_LINE = "%6.2fs"  # how arq's per-job lines start (its timing first)


class _ArqWorkerLogger(logging.Logger):
    """`arq.worker`'s logger: its per-job lines (start, end, retry, abort) are logged at DEBUG.

    arq logs them at INFO, the ones formatted with their timing first (`'%6.2fs → %s(%s)%s'`). At
    DEBUG they show with `--verbose` only, and with DEBUG off no record is made at all: one made
    just to be dropped cost a busy worker about 2% of its CPU (the record, the caller's frame
    looked up). `configure_logging` gives the logger this class (arq holds the logger object).
    """

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # a record names arq's line, not this
        if isinstance(msg, str) and msg.startswith(_ARQ_JOB_LINE):
            self.debug(msg, *args, **kwargs)
        else:
            super().info(msg, *args, **kwargs)


def json_formatter() -> JsonFormatter:
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, then the job's fields
    and any `extra`; an exception as `exc_info` text."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        reserved_attrs=_NOT_FIELDS,
        timestamp="time",
        json_ensure_ascii=False,  # names and prompts in any script stay readable; still valid JSON
    )


def configure_logging(
    fmt: LogFormat, *, verbose: bool = False, level: str = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Set up a routeq process's logging: one handler on the root logger; returns it.

    The handler replaces an earlier one of routeq's (a second call reconfigures) and leaves any
    other alone, unlike `dictConfig`, which would close a host's or a test runner's handlers too.

    Args:
        fmt: `text` (arq's terse `12:00:01: message`) or `json` (one object a line).
        verbose: every job logged (DEBUG): routeq's and arq's loggers at DEBUG.
        level: the level of routeq's, arq's and uvicorn's loggers when not verbose. Other
            libraries log warnings and errors only, through the same handler and format.
        stream: where lines go; None = sys.stderr.
    """
    chosen = logging.DEBUG if verbose else logging.getLevelNamesMapping()[level]
    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    handler.setLevel(chosen)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(
        json_formatter() if fmt == "json" else logging.Formatter("%(asctime)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("routeq", "arq"):
        logging.getLogger(name).setLevel(chosen)
    logging.getLogger("arq.worker").__class__ = _ArqWorkerLogger  # arq holds the object: change its class
    # `serve` starts uvicorn with log_config=None: its loggers then have no handlers of their own
    # and log through this one, in the chosen format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.getLevelNamesMapping()[level])
    return handler


def tune_gc(threshold: int) -> None:
    """Freeze what start-up left alive and collect young objects every `threshold` allocations
    (`ROUTEQ_GC_THRESHOLD`); 0 keeps Python's own settings."""
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)
