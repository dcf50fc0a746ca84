"""Queries of the key tables: the core's signing keys and client (API) keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from ..fastpath import flush
from ..key_models import api_keys, signing_keys
from ..rows import ApiKeyRow, SigningKeyRow, from_mapping, values_of


def insert_signing_key(conn: Connection, row: SigningKeyRow) -> None:
    flush(conn)
    conn.execute(insert(signing_keys).values(**values_of(row)))


def signing_keys_all(conn: Connection) -> list[SigningKeyRow]:
    flush(conn)
    rows = conn.execute(select(signing_keys).order_by(signing_keys.c.created_at)).mappings()
    return [from_mapping(SigningKeyRow, r) for r in rows]


def set_signing_state(conn: Connection, kid: str, state: str, at: datetime) -> bool:
    flush(conn)
    result = conn.execute(update(signing_keys).where(signing_keys.c.kid == kid).values(state=state, changed_at=at))
    return bool(result.rowcount)


def lock_signing_keys(conn: Connection) -> list[SigningKeyRow]:
    """Every signing key, locked (FOR UPDATE on Postgres): state changes are serialised."""
    flush(conn)
    rows = conn.execute(select(signing_keys).order_by(signing_keys.c.created_at).with_for_update()).mappings()
    return [from_mapping(SigningKeyRow, r) for r in rows]


def insert_api_key(conn: Connection, row: ApiKeyRow) -> None:
    flush(conn)
    conn.execute(insert(api_keys).values(**values_of(row)))


def api_key(conn: Connection, kid: str) -> ApiKeyRow | None:
    flush(conn)
    row = conn.execute(select(api_keys).where(api_keys.c.kid == kid)).mappings().first()
    return from_mapping(ApiKeyRow, row) if row is not None else None


def api_key_by_name(conn: Connection, name: str) -> ApiKeyRow | None:
    flush(conn)
    row = conn.execute(select(api_keys).where(api_keys.c.name == name)).mappings().first()
    return from_mapping(ApiKeyRow, row) if row is not None else None


def list_api_keys(conn: Connection) -> list[ApiKeyRow]:
    flush(conn)
    rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).mappings()
    return [from_mapping(ApiKeyRow, r) for r in rows]


def revoke_api_key(conn: Connection, kid: str, at: datetime) -> bool:
    """Revoke a key; False when there is no such key or it was revoked already."""
    flush(conn)
    result = conn.execute(update(api_keys).where(api_keys.c.kid == kid, api_keys.c.revoked_at.is_(None))
                          .values(revoked_at=at))
    return bool(result.rowcount)


def touch_api_key(conn: Connection, kid: str, at: datetime) -> None:
    flush(conn)
    conn.execute(update(api_keys).where(api_keys.c.kid == kid).values(last_used_at=at))


def set_sealed(conn: Connection, *, signing_kid: str | None = None, api_kid: str | None = None, value: str) -> None:
    """Store a key's secret sealed again (a data key rotation)."""
    flush(conn)
    if signing_kid is not None:
        conn.execute(update(signing_keys).where(signing_keys.c.kid == signing_kid).values(private=value))
    if api_kid is not None:
        conn.execute(update(api_keys).where(api_keys.c.kid == api_kid).values(mac_key=value))
