"""Log lines of routeq's processes: text or JSON, each carrying the job it is about.

    log_config(fmt, verbose)   the `logging.config.dictConfig` of `routeq worker`, `serve` and `run`
    job_log_context(job=...)   while a job runs, every line logged in it carries job, batch, tenant
    bind_job_log(batch=...)    and deployment: fields learnt later in the run join the context

The context is a `ContextVar`: arq runs each job in an asyncio task of its own, and a task starts
with a copy of its parent's context, so two jobs running at once never see each other's fields and
no call site passes `extra=`. `JobContextFilter`, on the handler, copies the known fields onto every
record; the JSON formatter writes them as keys, the text formatter ignores them.

`--verbose` means "log every job": arq logs each job's start and end at INFO, which a busy worker
turns into thousands of lines a second. `ArqJobLinesAtDebug` moves those lines to DEBUG, so they
show with `--verbose` only, with routeq's own per-job lines (DEBUG as well).

Workers and the producer both configure logging through here: neither may import the other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "CONTEXT_FIELDS",
    "ArqJobLinesAtDebug",
    "JobContextFilter",
    "bind_job_log",
    "job_log_context",
    "json_formatter",
    "log_config",
]

LogFormat = Literal["text", "json"]

# The fields a job's lines carry, in the order JSON lines show them.
CONTEXT_FIELDS = ("job", "batch", "tenant", "deployment")

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


class ArqJobLinesAtDebug(logging.Filter):
    """On the `arq.worker` logger: its per-job lines (start, end, retry, abort) become DEBUG records.

    They are the ones arq formats with their timing first (`'%6.2fs → %s(%s)%s'`). A logger's filter
    runs before its handlers compare levels, so a handler at INFO then drops them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and isinstance(record.msg, str) and record.msg.startswith("%6.2fs"):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


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


def log_config(fmt: LogFormat, *, verbose: bool = False, level: str = "INFO") -> dict[str, Any]:
    """The `dictConfig` of a routeq process: one stderr handler on the root logger.

    Args:
        fmt: `text` (arq's terse `12:00:01: message`) or `json` (one object a line).
        verbose: every job logged (DEBUG): routeq's and arq's loggers at DEBUG.
        level: the level of routeq's, arq's and uvicorn's loggers when not verbose. Other
            libraries log warnings and errors only, through the same handler and format.
    """
    chosen = "DEBUG" if verbose else level
    formatter: dict[str, Any] = (
        {"()": json_formatter}
        if fmt == "json"
        else {"format": "%(asctime)s: %(message)s", "datefmt": "%H:%M:%S"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "job_context": {"()": JobContextFilter},
            "arq_job_lines": {"()": ArqJobLinesAtDebug},
        },
        "formatters": {"routeq": formatter},
        "handlers": {
            "routeq": {
                "class": "logging.StreamHandler",
                "formatter": "routeq",
                "filters": ["job_context"],
                "level": chosen,
            }
        },
        "root": {"handlers": ["routeq"], "level": "WARNING"},
        "loggers": {
            "routeq": {"level": chosen},
            "arq": {"level": chosen},
            "arq.worker": {"filters": ["arq_job_lines"]},
            # uvicorn's own config (which `serve` replaces with this one) gives these handlers of
            # their own; here they log through the root's, in the chosen format.
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": level, "handlers": [], "propagate": True},
        },
    }
