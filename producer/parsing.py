"""A file's chunks as `Client.submit_chunks` writes them: parsed and encoded in a thread, or in a
process of their own beside the one that writes them.

Parsing and checking a line (JSON, the request model, the catalog's references) and serializing its
request as SQL stores it is most of the CPU a submitted file costs; writing the rows and queuing the
jobs is the rest. A thread shares the GIL with the event loop that writes, so its parsing only
overlaps the database's and Redis's own work. A `JsonlFile` is parsed by a child process: on a
machine with two cores, chunk n+1 is parsed there while chunk n is inserted and queued here.

    EncodedChunk   one chunk's valid lines encoded as their rows store them, and its rejected lines
    JsonlFile      a file to parse in a child process (`Client.submit_chunks` starts and stops it)
    in_thread      chunks of an iterable of `ParsedInput`, encoded in a worker thread
    in_process     chunks of a `JsonlFile`, parsed and encoded by a child process

The child sends each chunk through a pipe and parses the next one while this process writes; a
send waits for this process to read, so at most two chunks are held, whatever the file's size. The
child is a new interpreter (not a fork: the parent runs threads, the event loop's and the database
driver's) that imports only the parsing code, and is killed if the submission stops early.
"""

from __future__ import annotations

import asyncio
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

from producer.inputs import DEFAULT_CHUNK_LINES, InputRules, LineError, ParsedInput, read_jsonl_chunks
from router_core.models import ChatRequest
from storage.jobs import EncodedJobs, NewJob, encode_jobs

__all__ = [
    "IN_PROCESS_MIN_BYTES",
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


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """One chunk of a file, ready to be written.

    Attributes:
        jobs: Its valid lines, resolved and encoded as their rows store them, in line order.
        errors: Its rejected lines, in line order.
        lines_read: Its non-blank lines (valid and rejected).
        last_line: The number of its last non-blank line (None: all blank).
        offset: How far into the file its lines end, in bytes (None: not read from a file).
    """

    jobs: EncodedJobs
    errors: list[LineError]
    lines_read: int
    last_line: int | None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class JsonlFile:
    """A JSONL file for `Client.submit_chunks` to parse in a child process, `chunk_lines` at a time.

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
    jobs = encode_jobs(NewJob(item.custom_id, resolve(item.request)) for item in chunk.items)
    return EncodedChunk(jobs, chunk.errors, chunk.lines_read, max(last) if last else None, offset)


def encoded_chunks(
    source: Iterable[ParsedInput] | JsonlFile, resolve: Resolve
) -> AsyncGenerator[EncodedChunk, None]:
    """The chunks of `source`: a regular `JsonlFile` of at least `IN_PROCESS_MIN_BYTES` parsed in a
    child process, anything else in a thread.

    Raises:
        OSError: a `JsonlFile` that cannot be read.
    """
    if not isinstance(source, JsonlFile):
        return in_thread(source, resolve)
    found = source.path.stat()
    if stat.S_ISREG(found.st_mode) and found.st_size >= IN_PROCESS_MIN_BYTES:
        return in_process(source, resolve)
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


async def in_process(file: JsonlFile, resolve: Resolve) -> AsyncGenerator[EncodedChunk, None]:
    """The file's chunks, parsed and encoded by a child process; `resolve` must pickle.

    Raises:
        OSError: the file cannot be read (raised in the child, re-raised here).
        ParseProcessError: the child stopped without finishing the file.
    """
    read_fd, write_fd = os.pipe()
    try:
        # Not `multiprocessing`: its spawned child imports the parent's __main__ (the whole CLI).
        child = subprocess.Popen(  # noqa: ASYNC220 - fork and exec: the child's start is not waited for
            [sys.executable, "-c", _CHILD, str(write_fd)], stdin=subprocess.PIPE, pass_fds=(write_fd,)
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child's end: once it exits, a read here sees the pipe closed
    receiver = Connection(read_fd, writable=False)
    finished = False
    try:
        await asyncio.to_thread(_start, child, pickle.dumps((file, resolve)))
        while (ready := await asyncio.to_thread(_receive, receiver)) is not None:
            yield ready
        finished = True
    finally:
        receiver.close()
        if not finished:  # stopped early: the rest of the file is not wanted
            child.kill()
        await asyncio.to_thread(child.wait)


class ParseProcessError(RuntimeError):
    """The process parsing a file ended before the file did (killed, or out of memory)."""


_CHILD = "import sys; from producer.parsing import child_main; child_main(int(sys.argv[1]))"
_STOPPED = "the process parsing the file stopped before its end: submit the file again"
_END = "end"


def _start(child: subprocess.Popen[bytes], arguments: bytes) -> None:
    """Hand the child its file and resolver (on its stdin, which it reads once it has started)."""
    assert child.stdin is not None
    try:
        with child.stdin:
            child.stdin.write(arguments)
    except BrokenPipeError:
        raise ParseProcessError(_STOPPED) from None


def _receive(receiver: Connection) -> EncodedChunk | None:
    """The child's next chunk (None at the end of the file), or its error raised here."""
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
    """The child process: its file and resolver from stdin, each chunk sent on pipe `fd` as it is
    made, then the end, or the error met."""
    sender = Connection(fd, readable=False)
    file, resolve = pickle.load(sys.stdin.buffer)
    try:
        with file.path.open("rb") as source:
            for chunk in read_jsonl_chunks(source, file.rules, chunk_lines=file.chunk_lines):
                sender.send(("chunk", encode_chunk(chunk, resolve, source.tell())))
        sender.send((_END, None))
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. the file gone: the parent raises it
        sender.send(("error", exc))
    finally:
        sender.close()
