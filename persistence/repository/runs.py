"""Queries of runs and their steps, each inside a transaction the caller owns.

A run's row is its lock: the coordinator locks it (FOR UPDATE on Postgres) before it reads the
steps and changes anything, so that concurrent results of one run queue up instead of racing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.engine import Connection

from miniflow.protocol.states import RunStatus, StepStatus

from ..fastpath import batch_update, flush
from ..models import run_steps, runs, step_attempts
from ..rows import RunRow, StepRow, from_mapping, values_of
from ._common import RUN_ID, insert_ignore, set_values, update_statement

_SELECT_RUN = select(runs).where(runs.c.id == RUN_ID)
_LOCK_RUN = _SELECT_RUN.with_for_update()
_RUN_FOR_KEY = select(runs.c.id).where(runs.c.idempotency_key == bindparam("p_key"))
_SELECT_STEPS = select(run_steps).where(run_steps.c.run_id == RUN_ID)
_SELECT_STEP = select(run_steps).where(run_steps.c.run_id == RUN_ID, run_steps.c.step == bindparam("p_step"))
_SELECT_NEEDS = select(run_steps.c.step, run_steps.c.status, run_steps.c.output).where(
    run_steps.c.run_id == RUN_ID, run_steps.c.step.in_(bindparam("p_steps", expanding=True)))
_INSERT_STEPS = insert(run_steps)


def insert_run(conn: Connection, run: RunRow) -> bool:
    """Insert a run unless its idempotency key exists; True when this call created it."""
    return insert_ignore(conn, runs, values_of(run)) == 1


def run_id_for_key(conn: Connection, idempotency_key: str) -> str | None:
    flush(conn)
    found = conn.execute(_RUN_FOR_KEY, {"p_key": idempotency_key}).scalar()
    return str(found) if found is not None else None


def get_run(conn: Connection, run_id: str) -> RunRow | None:
    flush(conn)
    row = conn.execute(_SELECT_RUN, {"p_run_id": run_id}).mappings().first()
    return from_mapping(RunRow, row) if row is not None else None


def lock_run(conn: Connection, run_id: str) -> RunRow | None:
    """The run row, locked until the transaction ends (FOR UPDATE on Postgres)."""
    flush(conn)
    query = _LOCK_RUN if conn.dialect.name == "postgresql" else _SELECT_RUN
    row = conn.execute(query, {"p_run_id": run_id}).mappings().first()
    return from_mapping(RunRow, row) if row is not None else None


def lock_run_with_step(conn: Connection, run_id: str, step: str) -> tuple[RunRow | None, StepRow | None]:
    """The run row, locked until the transaction ends, then one of its steps.

    Two statements on purpose: on Postgres a join locked FOR UPDATE OF runs would, after waiting
    for a concurrent transaction of the same run, re-check the run row but keep the step row of
    its original snapshot, stale. Read after the lock, the step is current (READ COMMITTED)."""
    run = lock_run(conn, run_id)
    return run, (get_step(conn, run_id, step) if run is not None else None)


def update_run(conn: Connection, run_id: str, **values: Any) -> None:
    if batch_update(conn, runs, run_id, None, values):
        return
    columns, params = set_values(values)
    conn.execute(update_statement(runs, False, columns), {"p_run_id": run_id, **params})


def list_runs(conn: Connection, *, limit: int = 50, status: str | None = None,
              workflow: str | None = None) -> list[RunRow]:
    query = select(runs).order_by(runs.c.created_at.desc()).limit(limit)
    if status:
        query = query.where(runs.c.status == status)
    if workflow:
        query = query.where(runs.c.workflow == workflow)
    return [from_mapping(RunRow, r) for r in conn.execute(query).mappings()]


def page_runs(conn: Connection, *, limit: int = 50, status: str | None = None, workflows: Sequence[str] = (),
              since: datetime | None = None, until: datetime | None = None,
              before: tuple[datetime, str] | None = None, text: str | None = None) -> list[RunRow]:
    """Runs newest first, filtered (``workflows`` may hold ``*`` wildcards; ``text``: a prefix of the
    id, the whole idempotency key, or a part of the workflow name or of the error, any case), after
    the cursor ``before`` = (created_at, id) of the last run of the previous page."""
    query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
    if text:
        query = query.where(or_(runs.c.id.startswith(text, autoescape=True), runs.c.idempotency_key == text,
                                runs.c.workflow.icontains(text, autoescape=True),
                                runs.c.error.icontains(text, autoescape=True)))
    if status:
        query = query.where(runs.c.status == status)
    if workflows:
        query = query.where(or_(*(runs.c.workflow.like(w.replace("%", "").replace("_", "\\_").replace("*", "%"),
                                                       escape="\\") for w in workflows)))
    if since is not None:
        query = query.where(runs.c.created_at >= since)
    if until is not None:
        query = query.where(runs.c.created_at < until)
    if before is not None:
        at, run_id = before
        query = query.where(or_(runs.c.created_at < at, and_(runs.c.created_at == at, runs.c.id < run_id)))
    return [from_mapping(RunRow, r) for r in conn.execute(query).mappings()]


def runs_after(conn: Connection, after_id: str, limit: int = 500) -> list[RunRow]:
    """Runs in id order after ``after_id`` (a page of a walk over every run)."""
    query = select(runs).where(runs.c.id > after_id).order_by(runs.c.id).limit(limit)
    return [from_mapping(RunRow, r) for r in conn.execute(query).mappings()]


def find_run(conn: Connection, prefix: str) -> RunRow | None:
    """A run by id or by a unique id prefix (at least 6 characters)."""
    row = get_run(conn, prefix)
    if row is not None or len(prefix) < 6:
        return row
    rows = list(conn.execute(select(runs).where(runs.c.id.like(prefix.replace("%", "") + "%")).limit(2))
                .mappings())
    return from_mapping(RunRow, rows[0]) if len(rows) == 1 else None


def overdue_run_ids(conn: Connection, now: datetime, limit: int = 100) -> list[str]:
    """Running runs whose workflow deadline has passed (in one lock order for all coordinators)."""
    query = (select(runs.c.id).where(runs.c.status == RunStatus.RUNNING, runs.c.deadline_at.is_not(None),
                                     runs.c.deadline_at < now).order_by(runs.c.id).limit(limit))
    return [str(r) for r in conn.execute(query).scalars()]


# -- steps ----------------------------------------------------------------------------------------
def insert_steps(conn: Connection, rows: Sequence[StepRow]) -> None:
    flush(conn)
    if rows:
        conn.execute(_INSERT_STEPS, [values_of(r) for r in rows])


def get_steps(conn: Connection, run_id: str) -> dict[str, StepRow]:
    """The steps of a run by name."""
    flush(conn)
    rows = conn.execute(_SELECT_STEPS, {"p_run_id": run_id}).mappings()
    return {row["step"]: from_mapping(StepRow, row) for row in rows}


def get_step(conn: Connection, run_id: str, step: str) -> StepRow | None:
    flush(conn)
    row = conn.execute(_SELECT_STEP, {"p_run_id": run_id, "p_step": step}).mappings().first()
    return from_mapping(StepRow, row) if row is not None else None


def get_needs(conn: Connection, run_id: str, steps: Iterable[str]) -> dict[str, tuple[StepStatus, Any]]:
    """The status and output of some steps of a run, by name (the needs of a step to dispatch)."""
    names = list(steps)
    if not names:
        return {}
    flush(conn)
    rows = conn.execute(_SELECT_NEEDS, {"p_run_id": run_id, "p_steps": names})
    return {str(step): (StepStatus(status), output) for step, status, output in rows}


def next_attempts(conn: Connection, run_id: str, steps: Iterable[str]) -> dict[str, int]:
    """The number of the next attempt of each of some steps of a run (1 for a step never dispatched)."""
    names = list(steps)
    if not names:
        return {}
    flush(conn)
    rows = conn.execute(select(run_steps.c.step, run_steps.c.attempt).where(
        run_steps.c.run_id == run_id, run_steps.c.step.in_(names)))
    return {str(step): int(attempt or 0) + 1 for step, attempt in rows}


def update_steps_in_status(conn: Connection, run_id: str, current: StepStatus, **values: Any) -> None:
    """Set columns of every step of a run that is in status ``current`` (no need to know their names)."""
    flush(conn)
    conn.execute(update(run_steps).where(run_steps.c.run_id == run_id, run_steps.c.status == current)
                 .values(**values))


def update_step(conn: Connection, run_id: str, step: str, **values: Any) -> None:
    if batch_update(conn, run_steps, run_id, [step], values):
        return
    columns, params = set_values(values)
    conn.execute(update_statement(run_steps, False, columns), {"p_run_id": run_id, "p_step": step, **params})


def update_steps(conn: Connection, run_id: str, steps: Iterable[str], **values: Any) -> None:
    names = list(steps)
    if names and batch_update(conn, run_steps, run_id, names, values):
        return
    if len(names) == 1:
        update_step(conn, run_id, names[0], **values)
    elif names:
        columns, params = set_values(values)
        conn.execute(update_statement(run_steps, True, columns), {"p_run_id": run_id, "p_steps": names, **params})


def mark_queued_attempt(conn: Connection, run_id: str, step: str, attempt: int, **values: Any) -> bool:
    """Set columns of a step only while ``attempt`` is its current, queued attempt (a step that has
    moved on is left alone, so no lock is needed); True when the step was changed."""
    flush(conn)
    query = (update(run_steps).where(run_steps.c.run_id == run_id, run_steps.c.step == step,
                                     run_steps.c.attempt == attempt, run_steps.c.status == StepStatus.QUEUED)
             .values(**values))
    return (conn.execute(query).rowcount or 0) == 1


def unadvanced_attempts(conn: Connection, recorded_before: datetime, limit: int = 100) -> list[tuple[str, str, int]]:
    """(run, step, attempt) of running runs whose current attempt is recorded but the step is still
    queued: the step_finished that should have advanced the run never got through."""
    query = (select(run_steps.c.run_id, run_steps.c.step, run_steps.c.attempt)
             .join(runs, runs.c.id == run_steps.c.run_id)
             .join(step_attempts, (step_attempts.c.run_id == run_steps.c.run_id)
                   & (step_attempts.c.step == run_steps.c.step) & (step_attempts.c.attempt == run_steps.c.attempt))
             .where(runs.c.status == RunStatus.RUNNING, run_steps.c.status == StepStatus.QUEUED,
                    step_attempts.c.recorded_at < recorded_before)
             .order_by(run_steps.c.run_id).limit(limit))
    return [(str(r), str(s), int(a)) for r, s, a in conn.execute(query)]


def overdue_results(conn: Connection, now: datetime, limit: int = 100) -> list[tuple[str, str, int]]:
    """(run, step, attempt) of running runs whose queued attempt is past its result deadline with no
    result recorded."""
    recorded = (select(step_attempts.c.id).where(step_attempts.c.run_id == run_steps.c.run_id,
                                                 step_attempts.c.step == run_steps.c.step,
                                                 step_attempts.c.attempt == run_steps.c.attempt).exists())
    query = (select(run_steps.c.run_id, run_steps.c.step, run_steps.c.attempt)
             .join(runs, runs.c.id == run_steps.c.run_id)
             .where(run_steps.c.result_due_at < now, run_steps.c.status == StepStatus.QUEUED,
                    runs.c.status == RunStatus.RUNNING, ~recorded)
             .order_by(run_steps.c.run_id).limit(limit))
    return [(str(r), str(s), int(a)) for r, s, a in conn.execute(query)]
