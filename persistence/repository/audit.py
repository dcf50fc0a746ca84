"""Queries of the audit trail of the HTTP API (table audit_log)."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from ..fastpath import flush
from ..key_models import audit_log
from ..rows import AuditRow, from_mapping, values_of

DETAIL_CHARS = 500
RESOURCE_CHARS = 300


def insert_audit(conn: Connection, row: AuditRow) -> None:
    """Record one entry; text that came from a caller is cut to its column."""
    flush(conn)
    values = values_of(row)
    values["resource"] = values["resource"][:RESOURCE_CHARS]
    values["action"] = values["action"][:64]
    if values.get("detail"):
        values["detail"] = values["detail"][:DETAIL_CHARS]
    if values.get("client"):
        values["client"] = values["client"][:64]
    conn.execute(insert(audit_log).values(**values))


def list_audit(conn: Connection, *, limit: int = 50, before_id: int | None = None, key_id: str | None = None,
               outcome: str | None = None) -> list[AuditRow]:
    """Newest first; ``before_id``: the id of the last entry of the previous page."""
    flush(conn)
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(audit_log.c.id < before_id)
    if key_id is not None:
        query = query.where(audit_log.c.key_id == key_id)
    if outcome is not None:
        query = query.where(audit_log.c.outcome == outcome)
    return [from_mapping(AuditRow, r) for r in conn.execute(query).mappings()]
