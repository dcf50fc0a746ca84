"""The artifacts the database still refers to: the keep-set of ``miniflow artifacts gc``.

A reference (persistence/artifact_refs.py) lives inside JSON: a step's output (its row, its
attempts, a cache entry), an element of a map step, a run's params. Those columns are read as text,
only the rows whose text holds the reference marker, and every digest in them is kept. A full scan
of those tables: an operator's command, not a hot path.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Text, cast, select
from sqlalchemy.engine import Connection

from ..artifact_refs import MARKER
from ..fastpath import flush
from ..models import run_steps, runs, step_attempts, step_cache

_COLUMNS = (run_steps.c.output, run_steps.c.item, step_attempts.c.output, step_cache.c.output, runs.c.params)


def texts_with_refs(conn: Connection) -> Iterator[str]:
    """The JSON text of every value in the database that holds an artifact reference."""
    flush(conn)
    for column in _COLUMNS:
        text = cast(column, Text)
        rows = conn.execution_options(stream_results=True, yield_per=500).execute(
            select(text).where(text.like(f"%{MARKER}%")))
        for (value,) in rows:
            if value:
                yield str(value)
