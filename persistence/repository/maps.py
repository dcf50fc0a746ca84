"""Queries of map steps (coordinator/mapping.py): a map step's instances are steps of its run named
``step[i]``; the map step's own row counts them (``map_size``, ``map_next``, ``map_open``). The
caller holds the run's lock, so the counts move one result at a time.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from miniflow.protocol.states import StepStatus

from ..fastpath import flush, query_after_batch
from ..models import run_steps
from ..rows import StepRow, from_mapping


def _of(run_id: str, step: str) -> Any:
    """The rows of the instances of map step ``step`` (a step name holds no '[': only they match)."""
    return (run_steps.c.run_id == run_id) & run_steps.c.step.startswith(f"{step}[", autoescape=True)


def map_instances(conn: Connection, run_id: str, step: str) -> dict[int, StepRow]:
    """The instances of a map step by index (to run it again: which elements already succeeded)."""
    flush(conn)
    rows = conn.execute(select(run_steps).where(_of(run_id, step))).mappings()
    return {int(row["step"][len(step) + 1:-1]): from_mapping(StepRow, row) for row in rows}


def map_results(conn: Connection, run_id: str, step: str, size: int) -> list[tuple[int, StepStatus, Any]]:
    """Each instance's index, status and output, by index: the map step's results, once all have ended
    (the first ``size``: a list that became shorter for a run retry leaves instances past its end)."""
    flush(conn)
    rows = conn.execute(select(run_steps.c.step, run_steps.c.status, run_steps.c.output).where(_of(run_id, step)))
    found = [(int(name[len(step) + 1:-1]), StepStatus(status), output) for name, status, output in rows]
    return sorted((r for r in found if r[0] < size), key=lambda r: r[0])


_ENDED = ("UPDATE run_steps SET map_open = map_open - 1 WHERE run_id = %(m_run)s AND step = %(m_step)s "
          "RETURNING map_size, map_next, map_open")


def map_element_ended(conn: Connection, run_id: str, step: str) -> tuple[int, int, int]:
    """Count one of a map step's elements ended: its (map_size, map_next, map_open) after that. On
    Postgres one statement, sent with the writes batched before it (one round trip)."""
    if conn.dialect.name == "postgresql":
        row = query_after_batch(conn, _ENDED, {"m_run": run_id, "m_step": step})[0]
        return int(row["map_size"] or 0), int(row["map_next"] or 0), int(row["map_open"] or 0)
    flush(conn)
    where = (run_steps.c.run_id == run_id) & (run_steps.c.step == step)
    conn.execute(update(run_steps).where(where).values(map_open=run_steps.c.map_open - 1))
    size, after, left = conn.execute(select(run_steps.c.map_size, run_steps.c.map_next, run_steps.c.map_open)
                                     .where(where)).one()
    return int(size or 0), int(after or 0), int(left or 0)


def end_map_instances(conn: Connection, run_id: str, step: str, note: str) -> None:
    """A map step failed: its pending instances are skipped, its queued ones cancelled (their late
    results are recorded as attempts and change nothing)."""
    flush(conn)
    for current, status in ((StepStatus.PENDING, StepStatus.SKIPPED), (StepStatus.QUEUED, StepStatus.CANCELLED)):
        conn.execute(update(run_steps).where(_of(run_id, step), run_steps.c.status == current)
                     .values(status=status, note=note[:2000], result_due_at=None))
