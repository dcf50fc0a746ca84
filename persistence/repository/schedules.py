"""Queries of the cron timer, inside transactions the caller owns.

The ledger's UNIQUE (schedule_id, due_at) with INSERT ... ON CONFLICT DO NOTHING is the
exactly-once fence of a tick; ``lock_schedule`` (FOR UPDATE on Postgres) serialises the timers
that work on one schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from ..rows import ScheduleRow, TickRow, from_mapping, values_of
from ..schedule_models import schedule_ticks, schedules
from ._common import insert_ignore


# -- schedules ------------------------------------------------------------------------------------
def insert_schedule(conn: Connection, row: ScheduleRow) -> bool:
    """Insert a schedule unless its name exists; True when this call created it."""
    return insert_ignore(conn, schedules, values_of(row)) == 1


def update_schedule(conn: Connection, schedule_id: str, **values: Any) -> int:
    return conn.execute(update(schedules).where(schedules.c.id == schedule_id).values(**values)).rowcount or 0


def get_schedule(conn: Connection, name: str) -> ScheduleRow | None:
    row = conn.execute(select(schedules).where(schedules.c.name == name)).mappings().first()
    return from_mapping(ScheduleRow, row) if row is not None else None


def lock_schedule(conn: Connection, schedule_id: str) -> ScheduleRow | None:
    """The schedule row, locked until the transaction ends (FOR UPDATE on Postgres)."""
    query = select(schedules).where(schedules.c.id == schedule_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return from_mapping(ScheduleRow, row) if row is not None else None


def list_schedules(conn: Connection) -> list[ScheduleRow]:
    rows = conn.execute(select(schedules).order_by(schedules.c.name)).mappings()
    return [from_mapping(ScheduleRow, r) for r in rows]


def active_schedules(conn: Connection) -> list[ScheduleRow]:
    """Every schedule that is not paused and has a next tick."""
    rows = conn.execute(select(schedules).where(schedules.c.paused.is_(False),
                                                schedules.c.next_due_at.is_not(None))).mappings()
    return [from_mapping(ScheduleRow, r) for r in rows]


def delete_schedule(conn: Connection, schedule_id: str) -> None:
    conn.execute(delete(schedule_ticks).where(schedule_ticks.c.schedule_id == schedule_id))
    conn.execute(delete(schedules).where(schedules.c.id == schedule_id))


# -- the tick ledger ------------------------------------------------------------------------------
def insert_ticks(conn: Connection, rows: Sequence[TickRow]) -> int:
    """Record ticks once each; returns how many this call recorded (the others existed)."""
    if not rows:
        return 0
    if len(rows) == 1:
        return insert_ignore(conn, schedule_ticks, values_of(rows[0]))
    return insert_ignore(conn, schedule_ticks, [values_of(r) for r in rows])


def last_started(conn: Connection, schedule_id: str, outcomes: Sequence[str]) -> TickRow | None:
    """The most recent ledger row of the schedule that started a run."""
    row = conn.execute(select(schedule_ticks).where(
        schedule_ticks.c.schedule_id == schedule_id, schedule_ticks.c.outcome.in_(list(outcomes)))
        .order_by(schedule_ticks.c.fired_at.desc(), schedule_ticks.c.id.desc()).limit(1)).mappings().first()
    return from_mapping(TickRow, row) if row is not None else None


def buffered_tick(conn: Connection, schedule_id: str, outcome: str) -> TickRow | None:
    row = conn.execute(select(schedule_ticks).where(
        schedule_ticks.c.schedule_id == schedule_id, schedule_ticks.c.outcome == outcome)
        .order_by(schedule_ticks.c.due_at).limit(1)).mappings().first()
    return from_mapping(TickRow, row) if row is not None else None


def schedules_with_outcome(conn: Connection, outcome: str) -> list[str]:
    query = select(schedule_ticks.c.schedule_id).where(schedule_ticks.c.outcome == outcome).distinct()
    return [str(s) for s in conn.execute(query).scalars()]


def claim_tick(conn: Connection, tick_id: int, from_outcome: str, **values: Any) -> bool:
    """Move one ledger row from one outcome to the next; True for the one caller that did."""
    result = conn.execute(update(schedule_ticks).where(
        schedule_ticks.c.id == tick_id, schedule_ticks.c.outcome == from_outcome).values(**values))
    return (result.rowcount or 0) == 1


def recent_ticks(conn: Connection, schedule_id: str, limit: int = 20) -> list[TickRow]:
    rows = conn.execute(select(schedule_ticks).where(schedule_ticks.c.schedule_id == schedule_id)
                        .order_by(schedule_ticks.c.due_at.desc()).limit(limit)).mappings()
    return [from_mapping(TickRow, r) for r in rows]


def all_ticks(conn: Connection, schedule_id: str) -> list[TickRow]:
    rows = conn.execute(select(schedule_ticks).where(schedule_ticks.c.schedule_id == schedule_id)
                        .order_by(schedule_ticks.c.due_at)).mappings()
    return [from_mapping(TickRow, r) for r in rows]

