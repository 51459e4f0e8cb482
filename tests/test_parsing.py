"""A file parsed in a process of its own (`producer.parsing`): the same jobs and rejected lines as
parsed in a thread, the child stopped when the submission stops, and its death an error.

The size from which a file is parsed in a process is lowered, so that a small file takes that path.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import producer.parsing
from producer.client import Client, SubmitProgress
from producer.inputs import InputRules, parse_chunks, read_jsonl_chunks
from producer.parsing import JsonlFile, ParseProcessError, encode_chunk, in_process
from router_core.models import ChatRequest, Strategy
from router_core.policy import DefaultStrategy, with_default_strategy
from storage.jobs import NewJob, encode_jobs
from tests.backends import Backend

EXAMPLES = Path(__file__).parent.parent / "examples"


def write_file(path: Path, lines: int) -> Path:
    """`lines` lines: every 7th refused (temperature out of range), line 12 a duplicate of line 1,
    line 22 refused and a duplicate of line 3, line 5 blank, both formats and a default strategy to
    resolve."""
    rows = []
    for n in range(1, lines + 1):
        if n == 5:
            rows.append("")
        elif n % 7 == 0:
            rows.append(json.dumps({"custom_id": f"bad-{n}", "prompt": "x", "temperature": 9}))
        elif n == 12:
            rows.append(json.dumps({"custom_id": "id-1", "prompt": "again"}))
        elif n == 22:
            rows.append(json.dumps({"custom_id": "id-3", "prompt": "again", "temperature": 9}))
        elif n % 2:
            rows.append(json.dumps({"custom_id": f"id-{n}", "prompt": f"say {n}", "max_tokens": 20}))
        else:
            body = {"model": "router:cost", "messages": [{"role": "user", "content": f"line {n}"}]}
            openai = {"custom_id": f"id-{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            rows.append(json.dumps(openai))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def children(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """The parsing processes started from now on, a file of any size parsed in one."""
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(producer.parsing, "IN_PROCESS_MIN_BYTES", 1)
    monkeypatch.setattr(subprocess, "Popen", spy)
    return started


async def stored(client: Client, batch_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    jobs = [job async for job in client.results(batch_id)]
    return [(job.seq, job.custom_id, job.request) for job in jobs]


async def test_a_file_parsed_in_a_process_makes_what_a_thread_makes(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    path = write_file(tmp_path / "lines.jsonl", 30)
    with path.open("rb") as source:
        by_thread = await client.submit_chunks(read_jsonl_chunks(source, chunk_lines=4))
    started = children(monkeypatch)
    seen: list[int] = []
    by_process = await client.submit_chunks(
        JsonlFile(path, InputRules(), chunk_lines=4), on_chunk=lambda p: seen.append(p.bytes_read)
    )

    assert len(started) == producer.parsing.PARSE_PROCESSES
    assert by_process.errors == by_thread.errors
    assert [e.line for e in by_process.errors] == [7, 12, 14, 21, 22, 28]
    assert by_process.errors[4].reason.startswith("duplicate custom_id 'id-3' (first used on line 3); ")
    assert (by_process.queued, by_process.lines_read) == (by_thread.queued, by_thread.lines_read) == (23, 29)
    assert by_thread.batch_id is not None
    assert by_process.batch_id is not None
    assert await stored(client, by_process.batch_id) == await stored(client, by_thread.batch_id)
    assert len(seen) == 8  # 30 lines in chunks of 4
    assert seen == sorted(seen)
    assert seen[-1] == path.stat().st_size
    batch = await client.batch(by_process.batch_id)
    assert batch.total == 23
    assert [line["line"] for line in batch.invalid_lines] == [7, 12, 14, 21, 22, 28]
    assert await backend.run_worker() == 46


async def test_a_small_file_is_parsed_in_a_thread(backend: Backend, tmp_path: Path) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    path = write_file(tmp_path / "lines.jsonl", 10)
    assert path.stat().st_size < producer.parsing.IN_PROCESS_MIN_BYTES
    done = await client.submit_chunks(JsonlFile(path, InputRules(), chunk_lines=3))
    assert (done.queued, [e.line for e in done.errors]) == (8, [7])
    assert done.bytes_read == path.stat().st_size


async def test_the_process_is_stopped_when_the_submission_fails(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    path = write_file(tmp_path / "lines.jsonl", 2_000)
    started = children(monkeypatch)

    def stop(progress: SubmitProgress) -> None:
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        await client.submit_chunks(JsonlFile(path, InputRules(), chunk_lines=100), on_chunk=stop)
    assert len(started) == producer.parsing.PARSE_PROCESSES
    assert all(child.returncode is not None for child in started)  # killed and waited for


def resolve(request: ChatRequest) -> ChatRequest:
    return with_default_strategy(request, None, None)


@pytest.mark.parametrize(
    "resolver",
    [
        DefaultStrategy(None, None),
        DefaultStrategy(Strategy.COST, None),
        DefaultStrategy(None, Strategy.QUALITY),
        DefaultStrategy(Strategy.ESCALATE, Strategy.SPEED),
    ],
)
def test_a_chunk_is_encoded_as_its_resolved_requests_are(resolver: DefaultStrategy, tmp_path: Path) -> None:
    """Requests naming no preferences take a shortcut: the same text as resolving them, then
    `request_json`; those naming some are resolved."""
    lines = [
        *write_file(tmp_path / "lines.jsonl", 30).read_text().splitlines(),
        *(EXAMPLES / "chat-features.jsonl").read_text().splitlines(),
        json.dumps({"prompt": "p", "preferences": {"strategy": "cost"}}),
        json.dumps({"prompt": "p", "preferences": {"weights": {"cost": 2}}, "metadata": {"k": "v"}}),
        json.dumps({"prompt": "p", "user": "u-1", "model": "router:quality", "max_tokens": 9}),
    ]
    (chunk,) = parse_chunks(lines, chunk_lines=len(lines))
    assert len(chunk.items) > 30
    expected = encode_jobs(NewJob(item.custom_id, resolver(item.request)) for item in chunk.items)
    assert producer.parsing._unnamed_suffix(resolver) is not None  # the shortcut is taken
    assert encode_chunk(chunk, resolver).jobs == expected


@pytest.mark.parametrize("processes", [1, 3])
async def test_the_chunks_of_any_number_of_processes_are_those_of_one_thread(
    processes: int, tmp_path: Path
) -> None:
    path = write_file(tmp_path / "lines.jsonl", 40)
    with path.open("rb") as source:
        expected = [encode_chunk(chunk, resolve) for chunk in read_jsonl_chunks(source, chunk_lines=3)]
    chunks = in_process(JsonlFile(path, InputRules(), chunk_lines=3), resolve, processes)
    got = [chunk async for chunk in chunks]
    assert [dataclasses.replace(chunk, offset=None) for chunk in got] == expected
    assert got[-1].offset == path.stat().st_size


async def test_a_parsing_process_that_dies_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started = children(monkeypatch)
    # Chunks of 1,000 lines are larger than a pipe holds: the child waits on its second chunk.
    chunks = in_process(JsonlFile(write_file(tmp_path / "lines.jsonl", 3_000), InputRules(), 1_000), resolve)
    first = await anext(chunks)
    assert first.last_line == 1_000
    started[0].kill()
    with pytest.raises(ParseProcessError, match="stopped before its end"):
        await anext(chunks)
    await chunks.aclose()
    assert started[0].returncode is not None


async def test_what_the_process_cannot_read_is_raised_here(tmp_path: Path) -> None:
    chunks = in_process(JsonlFile(tmp_path, InputRules()), resolve)  # a directory
    with pytest.raises(IsADirectoryError):
        await anext(chunks)
    await chunks.aclose()


async def test_a_missing_file_is_refused_before_any_batch(backend: Backend, tmp_path: Path) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    with pytest.raises(FileNotFoundError):
        await client.submit_chunks(JsonlFile(tmp_path / "missing.jsonl", InputRules()))
    assert await client.store.batches.list(tenant=client.tenant, limit=1) == []
