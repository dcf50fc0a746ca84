"""Queries of the concurrency limits of runs (coordinator/concurrency.py).

A workflow with limits has a row in ``run_gates``. Every start and every end of one of its runs
updates that row before counting the workflow's running runs: on Postgres the update holds the
row's lock until the transaction ends, on SQLite the database's write lock, so two coordinators
decide the admissions of one workflow one after the other and each count includes what the other
committed. Lock order: a running run's row, then the gate, then queued runs (skipped if locked).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from miniflow.protocol.states import RunStatus

from ..fastpath import flush
from ..models import run_gates, runs
from ..rows import RunRow, from_mapping


def lock_gate(conn: Connection, workflow: str, now: datetime) -> None:
    """Take the gate of ``workflow`` (creating it) until the transaction ends."""
    flush(conn)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(run_gates).values(workflow=workflow, touched_at=now)
    conn.execute(statement.on_conflict_do_update(index_elements=[run_gates.c.workflow],
                                                 set_={"touched_at": statement.excluded.touched_at}))


def count_running(conn: Connection, workflow: str) -> dict[str | None, int]:
    """The running runs of ``workflow`` (every version), by concurrency key."""
    flush(conn)
    rows = conn.execute(select(runs.c.concurrency_key, func.count()).where(
        runs.c.workflow == workflow, runs.c.status == RunStatus.RUNNING).group_by(runs.c.concurrency_key))
    return {key: int(count) for key, count in rows}


def queued_runs(conn: Connection, workflow: str, limit: int, offset: int = 0) -> list[RunRow]:
    """The queued runs of ``workflow``, the first to admit first (higher priority, then older), locked
    (on Postgres those another transaction holds are skipped: it is cancelling them)."""
    flush(conn)
    query = select(runs).where(runs.c.workflow == workflow, runs.c.status == RunStatus.QUEUED).order_by(
        runs.c.priority.desc(), runs.c.created_at, runs.c.id).limit(limit).offset(offset)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [from_mapping(RunRow, row) for row in conn.execute(query).mappings()]


def workflows_with_queued_runs(conn: Connection, limit: int = 1000) -> list[str]:
    """The workflows that have queued runs, the one with the oldest first (the reconciler's pass
    looks for room for them)."""
    flush(conn)
    query = select(runs.c.workflow).where(runs.c.status == RunStatus.QUEUED).group_by(runs.c.workflow) \
        .order_by(func.min(runs.c.created_at)).limit(limit)
    return [str(name) for name in conn.execute(query).scalars()]
