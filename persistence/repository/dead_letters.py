"""Queries of the dead-letter archive: every rejected message, its reason code and a bounded copy."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from ..fastpath import flush
from ..models import dead_letters
from ..rows import DeadLetterRow, from_mapping, values_of


def insert_dead_letter(conn: Connection, row: DeadLetterRow) -> None:
    flush(conn)
    conn.execute(insert(dead_letters).values(**values_of(row)))


def dead_letters_for_message(conn: Connection, message_id: str) -> list[DeadLetterRow]:
    rows = conn.execute(select(dead_letters).where(dead_letters.c.message_id == message_id)
                        .order_by(dead_letters.c.id)).mappings()
    return [from_mapping(DeadLetterRow, r) for r in rows]


def prune_dead_letters(conn: Connection, before: datetime, limit: int = 1000) -> int:
    """Delete archived rejections older than ``before`` (at most ``limit`` per call); returns how many."""
    flush(conn)
    oldest = (select(dead_letters.c.id).where(dead_letters.c.created_at < before)
              .order_by(dead_letters.c.id).limit(limit))
    return conn.execute(delete(dead_letters).where(dead_letters.c.id.in_(oldest))).rowcount or 0


def list_dead_letters(conn: Connection, limit: int = 50, before_id: int | None = None) -> list[DeadLetterRow]:
    """Newest first; ``before_id``: the id of the last one of the previous page."""
    query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(dead_letters.c.id < before_id)
    return [from_mapping(DeadLetterRow, r) for r in conn.execute(query).mappings()]


def get_dead_letter(conn: Connection, letter_id: int) -> DeadLetterRow | None:
    row = conn.execute(select(dead_letters).where(dead_letters.c.id == letter_id)).mappings().first()
    return from_mapping(DeadLetterRow, row) if row is not None else None
