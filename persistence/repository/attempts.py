"""Queries of recorded step attempts: unique per (run, step, attempt), the durable dedupe of results."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection

from .. import fastpath
from ..models import step_attempts
from ..rows import AttemptRow, RunRow, StepRow, from_mapping, values_of
from ._common import insert_ignore
from .runs import get_step, lock_run


def insert_attempt(conn: Connection, attempt: AttemptRow) -> bool:
    """Record an attempt once: True when this call recorded it, False when it was already there."""
    return insert_ignore(conn, step_attempts, values_of(attempt)) == 1


def record_and_lock(conn: Connection, attempt: AttemptRow) -> tuple[RunRow | None, StepRow | None, bool]:
    """Lock the attempt's run, record the attempt once, read the run and the attempt's step:
    returns (run or None, step or None, whether this call recorded the attempt). An attempt of a
    run that does not exist is not recorded. On Postgres it is one round trip (see ``fastpath``)."""
    if conn.dialect.name != "postgresql":
        locked = lock_run(conn, attempt.run_id)
        if locked is None:
            return None, None, False
        recorded = insert_attempt(conn, attempt)
        return locked, get_step(conn, attempt.run_id, attempt.step), recorded
    run, steps, inserted = fastpath.record_and_read(conn, values_of(attempt))
    if run is None:
        return None, None, False
    return from_mapping(RunRow, run), (from_mapping(StepRow, steps[0]) if steps else None), inserted


def get_attempt(conn: Connection, run_id: str, step: str, attempt: int) -> AttemptRow | None:
    fastpath.flush(conn)
    row = conn.execute(select(step_attempts).where(
        step_attempts.c.run_id == run_id, step_attempts.c.step == step,
        step_attempts.c.attempt == attempt)).mappings().first()
    return from_mapping(AttemptRow, row) if row is not None else None


def get_attempts(conn: Connection, run_id: str) -> list[AttemptRow]:
    """Every recorded attempt of a run, in the order they started."""
    fastpath.flush(conn)
    rows = conn.execute(select(step_attempts).where(step_attempts.c.run_id == run_id)
                        .order_by(step_attempts.c.started_at, step_attempts.c.id)).mappings()
    return [from_mapping(AttemptRow, r) for r in rows]
