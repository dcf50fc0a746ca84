"""Queries of the result cache (coordinator/cache.py): an entry per digest of a task and its key.

A success of a cached step stores (or replaces) its entry in the transaction that records the
success; a hit reads it in the transaction that would have dispatched the step. Expired entries are
never served, and are deleted by ``prune_cache`` (the reconciler) or ``miniflow cache clear``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..fastpath import flush
from ..models import step_cache
from ..rows import CacheRow, from_mapping, values_of


def cache_get(conn: Connection, digest: str, now: datetime) -> CacheRow | None:
    """The live entry of ``digest`` (counted as a hit), or None."""
    flush(conn)
    row = conn.execute(select(step_cache).where(step_cache.c.digest == digest, step_cache.c.expires_at > now)
                       ).mappings().first()
    if row is None:
        return None
    conn.execute(update(step_cache).where(step_cache.c.digest == digest)
                 .values(hits=step_cache.c.hits + 1, last_hit_at=now))
    return from_mapping(CacheRow, row)


def cache_put(conn: Connection, entry: CacheRow) -> None:
    """Store an entry, replacing one of the same digest (a newer output of the same key)."""
    flush(conn)
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = values_of(entry)
    statement = dialect.insert(step_cache).values(**values)
    fresh = {name: statement.excluded[name] for name in values if name not in ("digest", "hits", "last_hit_at")}
    conn.execute(statement.on_conflict_do_update(index_elements=[step_cache.c.digest], set_={**fresh, "hits": 0}))


def cache_list(conn: Connection, *, task: str | None = None, limit: int = 100) -> list[CacheRow]:
    """Entries, the newest first (``task``: of one task only)."""
    flush(conn)
    query = select(step_cache).order_by(step_cache.c.created_at.desc()).limit(limit)
    if task is not None:
        query = query.where(step_cache.c.task == task)
    return [from_mapping(CacheRow, row) for row in conn.execute(query).mappings()]


def cache_stats(conn: Connection) -> tuple[int, int]:
    """How many entries there are, and the bytes of their outputs."""
    flush(conn)
    count, size = conn.execute(select(func.count(), func.coalesce(func.sum(step_cache.c.size), 0))).one()
    return int(count), int(size)


def cache_clear(conn: Connection, *, task: str | None = None, digest: str | None = None,
                expired_before: datetime | None = None) -> int:
    """Delete entries: all of them, or those of a task, of a digest, or expired by a time; how many."""
    flush(conn)
    statement = delete(step_cache)
    if task is not None:
        statement = statement.where(step_cache.c.task == task)
    if digest is not None:
        statement = statement.where(step_cache.c.digest == digest)
    if expired_before is not None:
        statement = statement.where(step_cache.c.expires_at <= expired_before)
    return int(conn.execute(statement).rowcount or 0)
