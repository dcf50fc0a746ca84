"""Queries of what is going on now, for the monitors: steps waiting in a queue, runs in flight, the
newest outcomes and dead letters. Each is bounded (``limit``): a monitor must stay cheap on a big
database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from miniflow.protocol.clock import as_utc
from miniflow.protocol.states import RunStatus, StepStatus

from ..fastpath import flush
from ..models import dead_letters, run_steps, runs, step_attempts


def waiting_steps(conn: Connection, *, limit: int = 10_000) -> list[dict[str, Any]]:
    """Queued steps that no executor reported running, oldest first: run_id, step, attempt, queued_at,
    workflow, version, note (why it waits, when an executor said)."""
    flush(conn)
    not_running = or_(run_steps.c.running_attempt.is_(None), run_steps.c.running_attempt != run_steps.c.attempt)
    query = (select(run_steps.c.run_id, run_steps.c.step, run_steps.c.attempt, run_steps.c.queued_at,
                    run_steps.c.note, runs.c.workflow, runs.c.version)
             .join(runs, runs.c.id == run_steps.c.run_id)
             .where(and_(run_steps.c.status == StepStatus.QUEUED, not_running, runs.c.status == RunStatus.RUNNING))
             .order_by(run_steps.c.queued_at).limit(limit))
    out = []
    for r in conn.execute(query).mappings():
        row = dict(r)
        row["queued_at"] = as_utc(row["queued_at"]) if row["queued_at"] is not None else None
        out.append(row)
    return out


def queued_run_count(conn: Connection) -> int:
    """How many runs wait for a slot under their workflow's concurrency limits."""
    flush(conn)
    return int(conn.execute(select(func.count()).where(runs.c.status == RunStatus.QUEUED)).scalar_one())


def active_runs(conn: Connection) -> tuple[int, datetime | None]:
    """How many runs have not ended, and when the oldest of them was created."""
    flush(conn)
    row = conn.execute(select(func.count(), func.min(runs.c.created_at)).where(runs.c.status == RunStatus.RUNNING)
                       ).one()
    return int(row[0]), as_utc(row[1]) if row[1] is not None else None


def running_steps(conn: Connection, *, limit: int = 50) -> list[dict[str, Any]]:
    """Steps an executor reported running, longest running first."""
    flush(conn)
    query = (select(run_steps.c.run_id, run_steps.c.step, run_steps.c.attempt, run_steps.c.node,
                    run_steps.c.started_at, runs.c.workflow)
             .join(runs, runs.c.id == run_steps.c.run_id)
             .where(and_(run_steps.c.status == StepStatus.QUEUED, run_steps.c.running_attempt == run_steps.c.attempt,
                         runs.c.status == RunStatus.RUNNING))
             .order_by(run_steps.c.started_at).limit(limit))
    return [dict(r) for r in conn.execute(query).mappings()]


def slowest_attempts(conn: Connection, since: datetime, *, limit: int = 10) -> list[dict[str, Any]]:
    """The longest attempts recorded since ``since``: run_id, step, attempt, ok, duration_ms, node."""
    flush(conn)
    query = (select(step_attempts.c.run_id, step_attempts.c.step, step_attempts.c.attempt, step_attempts.c.ok,
                    step_attempts.c.duration_ms, step_attempts.c.node, step_attempts.c.error_type)
             .where(step_attempts.c.recorded_at >= since)
             .order_by(step_attempts.c.duration_ms.desc()).limit(limit))
    return [dict(r) for r in conn.execute(query).mappings()]


def recent_dead_letters(conn: Connection, since: datetime, *, limit: int = 20) -> list[dict[str, Any]]:
    flush(conn)
    query = (select(dead_letters.c.id, dead_letters.c.created_at, dead_letters.c.queue, dead_letters.c.code,
                    dead_letters.c.actor, dead_letters.c.message_id)
             .where(dead_letters.c.created_at >= since).order_by(dead_letters.c.id.desc()).limit(limit))
    return [dict(r) for r in conn.execute(query).mappings()]
