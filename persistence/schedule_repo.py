"""Queries of the cron timer, in SQLAlchemy Core, inside transactions the caller owns.

The ledger's UNIQUE (schedule_id, due_at) with INSERT ... ON CONFLICT DO NOTHING is the
exactly-once fence of a tick; ``lock_schedule`` (FOR UPDATE on Postgres) serialises the timers
that work on one schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, RowMapping

from .repository import as_utc, insert_ignore
from .schedule_models import schedule_ticks, schedules

ScheduleRow = dict[str, Any]

def _schedule(row: RowMapping | None) -> ScheduleRow | None:
    if row is None:
        return None
    out = dict(row)
    for key in ("start_at", "end_at", "next_due_at", "created_at", "updated_at"):
        out[key] = as_utc(out[key])
    return out

def _tick(row: RowMapping) -> dict[str, Any]:
    out = dict(row)
    out["due_at"] = as_utc(out["due_at"])
    out["fired_at"] = as_utc(out["fired_at"])
    return out

# -- schedules ------------------------------------------------------------------------------------
def insert_schedule(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert a schedule unless its name exists; True when this call created it."""
    return insert_ignore(conn, schedules, values) == 1

def update_schedule(conn: Connection, schedule_id: str, **values: Any) -> int:
    return conn.execute(update(schedules).where(schedules.c.id == schedule_id).values(**values)).rowcount or 0

def get_schedule(conn: Connection, name: str) -> ScheduleRow | None:
    return _schedule(conn.execute(select(schedules).where(schedules.c.name == name)).mappings().first())

def lock_schedule(conn: Connection, schedule_id: str) -> ScheduleRow | None:
    """The schedule row, locked until the transaction ends (FOR UPDATE on Postgres)."""
    query = select(schedules).where(schedules.c.id == schedule_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return _schedule(conn.execute(query).mappings().first())

def list_schedules(conn: Connection) -> list[ScheduleRow]:
    rows = conn.execute(select(schedules).order_by(schedules.c.name)).mappings()
    return [r for r in (_schedule(row) for row in rows) if r is not None]

def active_schedules(conn: Connection) -> list[RowMapping]:
    """Id, cursor, jitter and overlap of every schedule that is not paused and has a next tick."""
    return list(conn.execute(
        select(schedules.c.id, schedules.c.next_due_at, schedules.c.jitter_s, schedules.c.overlap)
        .where(schedules.c.paused.is_(False), schedules.c.next_due_at.is_not(None))).mappings())

def delete_schedule(conn: Connection, schedule_id: str) -> None:
    conn.execute(delete(schedule_ticks).where(schedule_ticks.c.schedule_id == schedule_id))
    conn.execute(delete(schedules).where(schedules.c.id == schedule_id))

# -- the tick ledger ------------------------------------------------------------------------------
def insert_ticks(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Record ticks once each; returns how many this call recorded (the others existed)."""
    if not rows:
        return 0
    if len(rows) == 1:
        return insert_ignore(conn, schedule_ticks, dict(rows[0]))
    return insert_ignore(conn, schedule_ticks, list(rows))

def tick_exists(conn: Connection, schedule_id: str, due_at: datetime) -> bool:
    return conn.execute(select(schedule_ticks.c.id).where(
        schedule_ticks.c.schedule_id == schedule_id, schedule_ticks.c.due_at == due_at)).first() is not None

def last_started(conn: Connection, schedule_id: str, outcomes: Sequence[str]) -> dict[str, Any] | None:
    """The most recent ledger row of the schedule that started a run."""
    row = conn.execute(select(schedule_ticks).where(
        schedule_ticks.c.schedule_id == schedule_id, schedule_ticks.c.outcome.in_(list(outcomes)))
        .order_by(schedule_ticks.c.fired_at.desc(), schedule_ticks.c.id.desc()).limit(1)).mappings().first()
    return _tick(row) if row is not None else None

def buffered_tick(conn: Connection, schedule_id: str, outcome: str) -> dict[str, Any] | None:
    row = conn.execute(select(schedule_ticks).where(
        schedule_ticks.c.schedule_id == schedule_id, schedule_ticks.c.outcome == outcome)
        .order_by(schedule_ticks.c.due_at).limit(1)).mappings().first()
    return _tick(row) if row is not None else None

def schedules_with_outcome(conn: Connection, outcome: str) -> list[str]:
    return list(conn.execute(select(schedule_ticks.c.schedule_id).where(schedule_ticks.c.outcome == outcome)
                             .distinct()).scalars())

def claim_tick(conn: Connection, tick_id: int, from_outcome: str, **values: Any) -> bool:
    """Move one ledger row from one outcome to the next; True for the one caller that did."""
    result = conn.execute(update(schedule_ticks).where(
        schedule_ticks.c.id == tick_id, schedule_ticks.c.outcome == from_outcome).values(**values))
    return (result.rowcount or 0) == 1

def recent_ticks(conn: Connection, schedule_id: str, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute(select(schedule_ticks).where(schedule_ticks.c.schedule_id == schedule_id)
                        .order_by(schedule_ticks.c.due_at.desc()).limit(limit)).mappings()
    return [_tick(r) for r in rows]

def all_ticks(conn: Connection, schedule_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(select(schedule_ticks).where(schedule_ticks.c.schedule_id == schedule_id)
                        .order_by(schedule_ticks.c.due_at)).mappings()
    return [_tick(r) for r in rows]

__all__ = [
    "active_schedules", "all_ticks", "buffered_tick", "claim_tick", "delete_schedule", "get_schedule",
    "insert_schedule", "insert_ticks", "last_started", "list_schedules", "lock_schedule", "recent_ticks",
    "schedules_with_outcome", "tick_exists", "update_schedule",
]
