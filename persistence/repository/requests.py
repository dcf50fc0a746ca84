"""Queries of handled requests: the message ids of retry requests the coordinator acted on, so that
a redelivered request is not acted on twice."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from ..fastpath import flush
from ..models import handled_requests
from ._common import insert_ignore


def mark_handled(conn: Connection, message_id: str, kind: str, run_id: str, at: datetime) -> bool:
    """Remember that a request message was acted on; False if it already was (a redelivery)."""
    return insert_ignore(conn, handled_requests, {"message_id": message_id, "kind": kind, "run_id": run_id,
                                                  "handled_at": at}) == 1


def request_handled(conn: Connection, message_id: str) -> bool:
    """Whether the coordinator has acted on this request message."""
    flush(conn)
    return conn.execute(select(handled_requests.c.message_id).where(
        handled_requests.c.message_id == message_id)).first() is not None


def prune_handled(conn: Connection, before: datetime, limit: int = 1000) -> int:
    """Forget request ids handled before ``before`` (at most ``limit`` per call); returns how many."""
    flush(conn)
    oldest = (select(handled_requests.c.message_id).where(handled_requests.c.handled_at < before)
              .order_by(handled_requests.c.handled_at).limit(limit))
    return conn.execute(delete(handled_requests).where(handled_requests.c.message_id.in_(oldest))).rowcount or 0
