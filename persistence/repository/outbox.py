"""Queries of the outbox: messages committed with a state change, waiting to be published."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection

from ..fastpath import batch_outbox, flush
from ..models import outbox
from ..rows import OutboxRow, from_mapping, values_of

_INSERT = insert(outbox)
_DELETE = delete(outbox).where(outbox.c.message_id.in_(bindparam("p_ids", expanding=True)))


def add_outbox(conn: Connection, rows: Sequence[OutboxRow]) -> None:
    if not rows:
        return
    values = [values_of(r) for r in rows]
    if not batch_outbox(conn, values):
        conn.execute(_INSERT, values)


def delete_outbox(conn: Connection, message_ids: Sequence[str]) -> None:
    flush(conn)
    if message_ids:
        conn.execute(_DELETE, {"p_ids": list(message_ids)})


def claim_stale_outbox(conn: Connection, older_than: datetime, limit: int = 500,
                       namespace: str | None = None) -> list[OutboxRow]:
    """Outbox rows older than a cut-off (their publisher likely died), locked against other relays;
    with ``namespace``, only the rows bound for that namespace's queues (namespaces may share a
    database, and a row must be signed as its own namespace's core signs it)."""
    query = select(outbox).where(outbox.c.created_at < older_than).order_by(outbox.c.created_at).limit(limit)
    if namespace is not None:
        query = query.where(outbox.c.queue_name.startswith(namespace + ".", autoescape=True))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [from_mapping(OutboxRow, r) for r in conn.execute(query).mappings()]


def count_outbox(conn: Connection) -> int:
    flush(conn)
    return int(conn.execute(select(func.count()).select_from(outbox)).scalar() or 0)
