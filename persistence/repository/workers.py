"""Queries of the workers registry (table workers): heartbeats in, the list out.

A heartbeat is applied only when its ``beat`` is newer than the row's (or it comes from a new process
start under the same node name), so a heartbeat delivered late never overwrites a newer one, and the
last heartbeat of a clean stop is never undone by one sent before it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from ..fastpath import flush
from ..rows import WorkerRow, from_mapping, values_of
from ..worker_models import workers


def record_heartbeat(conn: Connection, row: WorkerRow) -> bool:
    """Insert or update a process's row from a heartbeat; False when the heartbeat was older than what
    the row holds (and so ignored)."""
    flush(conn)
    values = values_of(row)
    table = workers
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(table).values(**values)
    newer = or_(table.c.beat < statement.excluded.beat, table.c.started_at != statement.excluded.started_at)
    changed = {k: statement.excluded[k] for k in values if k != "node"}
    result = conn.execute(statement.on_conflict_do_update(index_elements=[table.c.node], set_=changed,
                                                          where=newer))
    return bool(result.rowcount)


def list_workers(conn: Connection, *, namespace: str | None = None, seen_since: datetime | None = None
                 ) -> list[WorkerRow]:
    """Every registered process (of one namespace), newest start first; ``seen_since`` leaves out rows
    whose last heartbeat is older (long gone)."""
    flush(conn)
    query = select(workers).order_by(workers.c.kind, workers.c.started_at.desc())
    if namespace is not None:
        query = query.where(workers.c.namespace == namespace)
    if seen_since is not None:
        query = query.where(workers.c.last_seen >= seen_since)
    return [from_mapping(WorkerRow, r) for r in conn.execute(query).mappings()]


def prune_workers(conn: Connection, before: datetime) -> int:
    """Forget processes not heard of since ``before`` (stopped or gone long ago)."""
    flush(conn)
    return int(conn.execute(delete(workers).where(workers.c.last_seen < before)).rowcount or 0)
