"""A file's chunks as `Client.submit_chunks` writes them: parsed and encoded in a thread, or by
processes of their own beside the one that writes them.

Parsing and checking a line (JSON, the request model, the catalog's references) and serializing its
request as SQL stores it is most of the CPU a submitted file costs; writing the rows and queuing the
jobs is the rest. A thread shares the GIL with the event loop that writes, so its parsing only
overlapped the database's and Redis's own work. A large `JsonlFile` is parsed by `PARSE_PROCESSES`
children: child k of n parses chunks k, k + n, k + 2n... while this process inserts and queues the
chunks before them.

    EncodedChunk        one chunk's valid lines encoded as their rows store them, its rejected lines
    JsonlFile           a file for `Client.submit_chunks` to parse in child processes when it is large
    encoded_chunks      the chunks of a `JsonlFile` or of an iterable of `ParsedInput`
    in_thread           chunks of an iterable of `ParsedInput`, encoded in a worker thread
    in_process          chunks of a `JsonlFile`, parsed and encoded by child processes
    without_duplicates  a chunk's lines whose custom_id an earlier line used, made errors

Each child sends its chunks through a pipe; a send waits for this process to read, so a child holds
two chunks at most (one sent, one parsed), whatever the file's size. This process takes the chunks
in turn and checks each line's ``custom_id`` against the earlier lines', in line order: the jobs and
rejected lines are those `producer.inputs.parse_chunks` makes in one thread. A child is a new
interpreter (not a fork: this process runs threads, the event loop's and the database driver's)
that imports only the parsing code, and is killed if the submission stops early.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import pickle
import stat
import subprocess
import sys
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from producer.inputs import (
    DEFAULT_CHUNK_LINES,
    BatchItem,
    InputRules,
    LineError,
    ParsedInput,
    duplicate_reason,
    read_jsonl_chunks,
)
from router_core.models import ChatRequest, Message
from router_core.policy import DefaultStrategy
from storage.jobs import EncodedJob, EncodedJobs, NewJob, encode_jobs, request_json

__all__ = [
    "IN_PROCESS_MIN_BYTES",
    "PARSE_PROCESSES",
    "EncodedChunk",
    "JsonlFile",
    "ParseProcessError",
    "child_main",
    "encoded_chunks",
    "in_process",
    "in_thread",
]

Resolve = Callable[[ChatRequest], ChatRequest]  # a request with its default strategy resolved

IN_PROCESS_MIN_BYTES = 1_000_000
"""A smaller file is parsed in a thread: a process takes a few tenths of a second to start."""

PARSE_PROCESSES = min(4, os.cpu_count() or 1)
"""Processes parsing one large file: one per core (up to 4). The submitting process mostly waits on
the database and Redis, so on two cores two parsers and it share them without idling either."""


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """One chunk of a file, ready to be written.

    Attributes:
        jobs: Its valid lines, resolved and encoded as their rows store them, in line order.
        errors: Its rejected lines, in line order.
        lines: The line number of each of `jobs`.
        lines_read: Its non-blank lines (valid and rejected).
        last_line: The number of its last non-blank line (None: all blank).
        offset: How far into the file its lines end, in bytes (None: not read from a file).
    """

    jobs: EncodedJobs
    lines: list[int]
    errors: list[LineError]
    lines_read: int
    last_line: int | None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class JsonlFile:
    """A JSONL file for `Client.submit_chunks` to parse, `chunk_lines` at a time: in child processes
    when it is large (`encoded_chunks`).

    Attributes:
        path: The file.
        rules: What each line must satisfy (`producer.inputs.read_jsonl_chunks`).
        chunk_lines: Lines per chunk.
    """

    path: Path
    rules: InputRules
    chunk_lines: int = DEFAULT_CHUNK_LINES


def encode_chunk(chunk: ParsedInput, resolve: Resolve, offset: int | None = None) -> EncodedChunk:
    """The chunk's items resolved and encoded (`encode_jobs`), with its errors and counts."""
    last = [found[-1].line for found in (chunk.items, chunk.errors) if found]
    unnamed = _unnamed_suffix(resolve)
    if unnamed is None:
        jobs = encode_jobs(NewJob(item.custom_id, resolve(item.request)) for item in chunk.items)
    else:
        jobs = EncodedJobs([_encoded(item, resolve, unnamed) for item in chunk.items])
    lines = [item.line for item in chunk.items]
    return EncodedChunk(jobs, lines, chunk.errors, chunk.lines_read, max(last) if last else None, offset)


# A request naming no preferences (most lines) resolves to the same preferences as every other one:
# `request_json` of the resolved request is its text without preferences, then those preferences
# (the last field), serialized once per chunk. Resolving it (two model copies) and serializing its
# preferences was about a third of encoding it.
_PROBE = ChatRequest(messages=[Message(role="user", content="-")])


def _unnamed_suffix(resolve: Resolve) -> str | None:
    """What resolving adds to the end of the text of a request naming no preferences; None when
    `resolve` is not a `DefaultStrategy` (what it does to such a request is not known)."""
    if not isinstance(resolve, DefaultStrategy):
        return None
    bare = request_json(_PROBE)  # it names no preferences: its text leaves them out
    whole = request_json(resolve(_PROBE))
    return whole[len(bare) - 1 :] if whole.startswith(bare[:-1]) else None


def _encoded(item: BatchItem, resolve: Resolve, unnamed: str) -> EncodedJob:
    """`encode_jobs` of the item resolved: the same row."""
    request = item.request
    if request.preferences.model_fields_set:
        text = request_json(resolve(request))
    else:  # `request_json` of such a request leaves preferences out, and `resolve` adds them
        text = request_json(request)[:-1] + unnamed
    return EncodedJob(item.custom_id, text, False, request.user, request.metadata)


def without_duplicates(chunk: EncodedChunk, first_used: dict[str, int]) -> EncodedChunk:
    """The chunk with each line whose ``custom_id`` an earlier line used (in `first_used`, which
    records the chunk's ids) turned into an error, as `producer.inputs.parse_chunks` does."""
    jobs, lines, errors = [], [], []
    kept = iter(chunk.errors)
    error = next(kept, None)
    for job, line in zip(chunk.jobs.jobs, chunk.lines, strict=True):
        while error is not None and error.line < line:  # in line order: the ids are first used so
            errors.append(_unique_error(error, first_used))
            error = next(kept, None)
        reason = duplicate_reason(job.custom_id, line, first_used)
        if reason is None:
            jobs.append(job)
            lines.append(line)
        else:
            errors.append(LineError(line, reason, job.custom_id))
    while error is not None:
        errors.append(_unique_error(error, first_used))
        error = next(kept, None)
    return dataclasses.replace(chunk, jobs=EncodedJobs(jobs), lines=lines, errors=errors)


def _unique_error(error: LineError, first_used: dict[str, int]) -> LineError:
    reason = duplicate_reason(error.custom_id, error.line, first_used)
    return error if reason is None else LineError(error.line, f"{reason}; {error.reason}", error.custom_id)


def encoded_chunks(
    source: Iterable[ParsedInput] | JsonlFile, resolve: Resolve
) -> AsyncGenerator[EncodedChunk, None]:
    """The chunks of `source`: a regular `JsonlFile` of at least `IN_PROCESS_MIN_BYTES` parsed by
    `PARSE_PROCESSES` child processes, anything else in a thread.

    Raises:
        OSError: a `JsonlFile` that cannot be read.
    """
    if not isinstance(source, JsonlFile):
        return in_thread(source, resolve)
    found = source.path.stat()
    if stat.S_ISREG(found.st_mode) and found.st_size >= IN_PROCESS_MIN_BYTES:
        return in_process(source, resolve, PARSE_PROCESSES)
    return _small_file(source, resolve)


async def in_thread(
    chunks: Iterable[ParsedInput], resolve: Resolve, tell: Callable[[], int] | None = None
) -> AsyncGenerator[EncodedChunk, None]:
    """`chunks` encoded one at a time in a worker thread, each as it is asked for; `tell` says
    how far into their file each one ends."""
    lines = iter(chunks)
    while (ready := await asyncio.to_thread(_next_encoded, lines, resolve, tell)) is not None:
        yield ready


def _next_encoded(
    chunks: Iterator[ParsedInput], resolve: Resolve, tell: Callable[[], int] | None
) -> EncodedChunk | None:
    chunk = next(chunks, None)
    return None if chunk is None else encode_chunk(chunk, resolve, None if tell is None else tell())


async def _small_file(file: JsonlFile, resolve: Resolve) -> AsyncGenerator[EncodedChunk, None]:
    source = await asyncio.to_thread(file.path.open, "rb")
    with source:
        chunks = read_jsonl_chunks(source, file.rules, chunk_lines=file.chunk_lines)
        async for chunk in in_thread(chunks, resolve, source.tell):
            yield chunk


async def in_process(
    file: JsonlFile, resolve: Resolve, processes: int = 1
) -> AsyncGenerator[EncodedChunk, None]:
    """The file's chunks, parsed and encoded by `processes` child processes; `resolve` must pickle.

    Child k parses chunks k, k + n, k + 2n... of the n; their chunks are taken in turn, and the
    ``custom_id`` of each line is checked here against the earlier ones, in line order.

    Raises:
        OSError: the file cannot be read (raised in a child, re-raised here).
        ParseProcessError: a child stopped without finishing its part of the file.
    """
    children: list[tuple[subprocess.Popen[bytes], Connection]] = []
    finished = False
    try:
        children.extend(_start_child() for _ in range(processes))
        work = [pickle.dumps((file, resolve, (part, processes))) for part in range(processes)]
        # All at once: each child reads its work once it has started (imports take a few tenths).
        await asyncio.gather(
            *(asyncio.to_thread(_hand, c, w) for (c, _), w in zip(children, work, strict=True))
        )
        first_used: dict[str, int] = {}
        for turn in itertools.count():
            chunk = await asyncio.to_thread(_receive, children[turn % processes][1])
            if chunk is None:  # one child's end is the file's: the others' next chunks would come later
                break
            yield without_duplicates(chunk, first_used)
        finished = True
    finally:
        for process, receiver in children:
            receiver.close()
            if not finished:  # stopped early: the rest of the file is not wanted
                process.kill()
            await asyncio.to_thread(process.wait)


class ParseProcessError(RuntimeError):
    """The process parsing a file ended before the file did (killed, or out of memory)."""


def _start_child() -> tuple[subprocess.Popen[bytes], Connection]:
    """A child process, and the end of the pipe it sends its chunks on."""
    read_fd, write_fd = os.pipe()
    try:
        # Not `multiprocessing`: its spawned child imports the parent's __main__ (the whole CLI).
        # A process group of its own: Ctrl-C at the terminal reaches this process, which stops it.
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            process_group=0,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child's end: once it exits, a read here sees the pipe closed
    return child, Connection(read_fd, writable=False)


_CHILD = "import sys; from producer.parsing import child_main; child_main(int(sys.argv[1]))"
_STOPPED = "the process parsing the file stopped before its end: submit the file again"
_END = "end"


def _hand(child: subprocess.Popen[bytes], arguments: bytes) -> None:
    """Hand the child its work (on its stdin, which it reads once it has started)."""
    assert child.stdin is not None
    try:
        with child.stdin:
            child.stdin.write(arguments)
    except BrokenPipeError:
        raise ParseProcessError(_STOPPED) from None


def _receive(receiver: Connection) -> EncodedChunk | None:
    """The child's next chunk (None at the end of its part), or its error raised here."""
    try:
        message: tuple[str, Any] = receiver.recv()
    except (EOFError, OSError):  # OSError: the pipe closed in the middle of a chunk
        raise ParseProcessError(_STOPPED) from None
    kind, value = message
    if kind == _END:
        return None
    if isinstance(value, BaseException):
        raise value
    assert isinstance(value, EncodedChunk)
    return value


def child_main(fd: int) -> None:
    """A child process: its file, resolver and part from stdin, each chunk of its part sent on pipe
    `fd` as it is made, then the end, or the error met."""
    sender = Connection(fd, readable=False)
    try:
        file, resolve, part = pickle.load(sys.stdin.buffer)
    except EOFError:  # the parent stopped before handing the work over
        return
    try:
        with file.path.open("rb") as source:
            chunks = read_jsonl_chunks(source, file.rules, chunk_lines=file.chunk_lines, part=part)
            for chunk in chunks:
                sender.send(("chunk", encode_chunk(chunk, resolve, source.tell())))
        sender.send((_END, None))
    except BrokenPipeError:  # the parent is gone: nobody wants the rest
        return
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. the file gone: the parent raises it
        with contextlib.suppress(BrokenPipeError):
            sender.send(("error", exc))
    finally:
        with contextlib.suppress(BrokenPipeError):
            sender.close()
