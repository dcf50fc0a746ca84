"""Queries of the web UI's sessions (table ui_sessions): open, find by the cookie's token hash,
touch, end, list, prune."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from ..fastpath import flush
from ..rows import SessionRow, from_mapping, values_of
from ..session_models import ui_sessions

MAX_LISTED = 500


def insert_session(conn: Connection, row: SessionRow) -> None:
    flush(conn)
    conn.execute(insert(ui_sessions).values(**values_of(row)))


def session_by_token_hash(conn: Connection, token_hash: str) -> SessionRow | None:
    flush(conn)
    row = conn.execute(select(ui_sessions).where(ui_sessions.c.token_hash == token_hash)).mappings().first()
    return from_mapping(SessionRow, row) if row is not None else None


def touch_session(conn: Connection, session_id: str, at: datetime) -> None:
    flush(conn)
    conn.execute(update(ui_sessions).where(ui_sessions.c.id == session_id).values(last_seen=at))


def end_session(conn: Connection, session_id: str, at: datetime) -> bool:
    """Sign out or revoke one session; False when there is no open session of that id."""
    flush(conn)
    result = conn.execute(update(ui_sessions).where(ui_sessions.c.id == session_id,
                                                    ui_sessions.c.revoked_at.is_(None)).values(revoked_at=at))
    return bool(result.rowcount)


def open_sessions(conn: Connection, now: datetime) -> list[SessionRow]:
    """Sessions neither ended nor past their absolute expiry, newest first (at most MAX_LISTED)."""
    flush(conn)
    rows = conn.execute(select(ui_sessions).where(ui_sessions.c.revoked_at.is_(None), ui_sessions.c.expires_at > now)
                        .order_by(ui_sessions.c.created_at.desc()).limit(MAX_LISTED)).mappings()
    return [from_mapping(SessionRow, r) for r in rows]


def prune_sessions(conn: Connection, before: datetime) -> int:
    """Forget sessions that ended or expired before ``before``."""
    flush(conn)
    result = conn.execute(delete(ui_sessions).where(or_(ui_sessions.c.expires_at < before,
                                                        ui_sessions.c.revoked_at < before)))
    return int(result.rowcount or 0)
