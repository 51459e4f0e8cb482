"""docs/architecture.md stays true to the schema: its table of SQL tables names each table once.

The document is edited by hand as migrations land; a row copied instead of moved once left two
`batches` rows and two `ledger` rows saying different things, and a paragraph pasted inside the
table cut it in two (Markdown shows the rows after it as plain text).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from storage.sql.schema import metadata

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
HEADER = "| table | one row per | key columns |"
ROW = re.compile(r"^\| `([a-z_]+)` \|")


def table_rows(text: str) -> list[str]:
    """The table names of the document's SQL table, in order: the rows right after its header
    (and the line under it) up to the first line that is not a row."""
    lines = text.splitlines()
    start = lines.index(HEADER) + 2
    names = []
    for line in lines[start:]:
        match = ROW.match(line)
        if match is None:
            break
        names.append(match.group(1))
    return names


def test_every_table_is_one_row_of_the_documents_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    names = table_rows(text)
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    assert twice == [], f"docs/architecture.md describes these tables more than once: {twice}"
    missing, unknown = sorted(set(metadata.tables) - set(names)), sorted(set(names) - set(metadata.tables))
    assert (missing, unknown) == ([], []), "docs/architecture.md's table of tables is not schema.py's"
    # A row outside the table (after a paragraph that cut it) is not shown as one.
    stray = [m.group(1) for m in map(ROW.match, text.splitlines()) if m and m.group(1) in metadata.tables]
    assert len(stray) == len(names), "a row of the table of tables stands apart from it"


def test_table_rows_stop_at_the_first_line_that_is_not_a_row() -> None:
    text = f"{HEADER}\n|---|---|---|\n| `jobs` | a | b |\n\nprose\n| `ledger` | a | b |\n"
    assert table_rows(text) == ["jobs"]
