"""Queries of the slots of step pools (coordinator/pools.py).

A pool with a limit has a row in ``pool_slots``. Every admission to the pool (a dispatch of one of
its steps, a pass over its waiting steps) updates that row first, then counts the steps holding a
slot (queued, with ``run_steps.pool`` set): on Postgres the update holds the row's lock until the
transaction ends, on SQLite the database's write lock, so admissions of one pool happen one at a
time, across coordinators. Lock order: a run's row, then the pool's, then the runs of waiting steps
(skipped if locked: another transaction is on them, and the reconciler's pass comes back).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from miniflow.protocol.states import StepStatus

from ..fastpath import flush
from ..models import pool_slots, run_steps, runs
from ..rows import RunRow, from_mapping


def pool_limits(conn: Connection, pools: Sequence[str]) -> dict[str, int]:
    """The slots of those of ``pools`` that have a limit."""
    if not pools:
        return {}
    flush(conn)
    rows = conn.execute(select(pool_slots.c.pool, pool_slots.c.slots).where(pool_slots.c.pool.in_(list(pools))))
    return {str(pool): int(slots) for pool, slots in rows}


def lock_pool(conn: Connection, pool: str, now: datetime) -> int | None:
    """Take the row of ``pool`` until the transaction ends; its slots (None: it has no limit now)."""
    flush(conn)
    conn.execute(update(pool_slots).where(pool_slots.c.pool == pool).values(updated_at=now))
    return conn.execute(select(pool_slots.c.slots).where(pool_slots.c.pool == pool)).scalar()


def clear_ended(conn: Connection, pool: str) -> None:
    """Clear the pool of the steps of ``pool`` that neither hold nor wait for a slot any more (they
    ended), so that its partial index holds the live ones only. The caller holds the pool's row."""
    flush(conn)
    live = (run_steps.c.status == StepStatus.QUEUED) | (
        (run_steps.c.status == StepStatus.PENDING) & run_steps.c.slot_wait_since.is_not(None))
    conn.execute(update(run_steps).where(run_steps.c.pool == pool, ~live).values(pool=None, slot_wait_since=None))


def slots_in_use(conn: Connection, pool: str) -> int:
    """The steps holding a slot of ``pool``: queued, of that pool."""
    flush(conn)
    return int(conn.execute(select(func.count()).select_from(run_steps).where(
        run_steps.c.pool == pool, run_steps.c.status == StepStatus.QUEUED)).scalar_one())


def waiting_for_slots(conn: Connection, pool: str, limit: int) -> list[tuple[str, str]]:
    """(run id, step) of the steps waiting for a slot of ``pool``, the first to admit first: the
    higher run priority, then the longest waiting."""
    flush(conn)
    query = select(run_steps.c.run_id, run_steps.c.step).join(runs, runs.c.id == run_steps.c.run_id).where(
        run_steps.c.pool == pool, run_steps.c.status == StepStatus.PENDING,
        run_steps.c.slot_wait_since.is_not(None)).order_by(
        runs.c.priority.desc(), run_steps.c.slot_wait_since, run_steps.c.run_id, run_steps.c.step).limit(limit)
    return [(str(run_id), str(step)) for run_id, step in conn.execute(query)]


def lock_run_unless_taken(conn: Connection, run_id: str) -> RunRow | None:
    """A run's row locked, unless another transaction holds it (None then, on Postgres; SQLite has
    one writer at a time)."""
    flush(conn)
    query = select(runs).where(runs.c.id == run_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    row = conn.execute(query).mappings().first()
    return from_mapping(RunRow, row) if row is not None else None


def pools_with_waiting_steps(conn: Connection, limit: int = 1000) -> list[str]:
    """The pools that have steps waiting for a slot (the reconciler's pass admits what it can)."""
    flush(conn)
    query = select(run_steps.c.pool).where(run_steps.c.pool.is_not(None), run_steps.c.status == StepStatus.PENDING,
                                           run_steps.c.slot_wait_since.is_not(None)).distinct().limit(limit)
    return sorted(str(pool) for pool in conn.execute(query).scalars())


def set_pool_slots(conn: Connection, pool: str, slots: int | None, now: datetime) -> None:
    """Give ``pool`` a limit of ``slots`` (None: take its limit away)."""
    flush(conn)
    if slots is None:
        conn.execute(delete(pool_slots).where(pool_slots.c.pool == pool))
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(pool_slots).values(pool=pool, slots=slots, updated_at=now)
    conn.execute(statement.on_conflict_do_update(index_elements=[pool_slots.c.pool],
                                                 set_={"slots": slots, "updated_at": now}))


def list_pools(conn: Connection) -> list[tuple[str, int | None, int, int]]:
    """Each pool with a limit or with steps holding or waiting for a slot: (pool, slots, in use, waiting)."""
    flush(conn)
    limits = {str(p): int(s) for p, s in conn.execute(select(pool_slots.c.pool, pool_slots.c.slots))}
    holding = (run_steps.c.status == StepStatus.QUEUED) | (
        (run_steps.c.status == StepStatus.PENDING) & run_steps.c.slot_wait_since.is_not(None))
    counts = conn.execute(select(run_steps.c.pool, run_steps.c.status, func.count()).where(
        run_steps.c.pool.is_not(None), holding).group_by(run_steps.c.pool, run_steps.c.status))
    used: dict[str, int] = {}
    waiting: dict[str, int] = {}
    for pool, status, count in counts:
        (used if status == StepStatus.QUEUED else waiting)[str(pool)] = int(count)
    names = sorted(set(limits) | set(used) | set(waiting))
    return [(name, limits.get(name), used.get(name, 0), waiting.get(name, 0)) for name in names]
