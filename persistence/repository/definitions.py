"""Queries of stored workflow definitions: versions are immutable once stored."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import String, bindparam, func, insert, select
from sqlalchemy.engine import Connection

from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import VersionConflict

from ..fastpath import flush
from ..models import workflow_definitions as wd
from ..rows import DefinitionRow, from_mapping

_LATEST_VERSION = select(func.max(wd.c.version)).where(wd.c.name == bindparam("p_name", type_=String()))


def spec_checksum(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_definition(conn: Connection, name: str, spec: dict[str, Any], source: str | None,
                    version: int | None = None) -> tuple[int, bool]:
    """Store a definition as a new version unless the latest one is identical.

    Returns (version, created). Asking for an existing version number with a different spec raises
    :class:`VersionConflict`."""
    checksum = spec_checksum(spec)
    if version is not None:
        existing = conn.execute(select(wd.c.checksum).where(wd.c.name == name, wd.c.version == version)).scalar()
        if existing is not None:
            if existing != checksum:
                raise VersionConflict(f"workflow {name!r} version {version} is already deployed with a "
                                      "different definition; versions are immutable: bump the version")
            return version, False
    else:
        latest = conn.execute(select(wd.c.version, wd.c.checksum).where(wd.c.name == name)
                              .order_by(wd.c.version.desc()).limit(1)).first()
        if latest is not None and latest.checksum == checksum:
            return int(latest.version), False
        version = (latest.version + 1) if latest is not None else 1
    conn.execute(insert(wd).values(name=name, version=version, spec=spec, checksum=checksum, source=source,
                                   created_at=utcnow()))
    assert version is not None
    return version, True


def get_definition(conn: Connection, name: str, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """(version, spec) of a deployed workflow: the given version, or the latest."""
    flush(conn)
    query = select(wd.c.version, wd.c.spec).where(wd.c.name == name)
    if version is not None:
        query = query.where(wd.c.version == version)
    row = conn.execute(query.order_by(wd.c.version.desc()).limit(1)).first()
    return (int(row.version), dict(row.spec)) if row is not None else None


def latest_version(conn: Connection, name: str) -> int | None:
    """The latest deployed version of a workflow (None if it is not deployed)."""
    flush(conn)
    found = conn.execute(_LATEST_VERSION, {"p_name": name}).scalar()
    return int(found) if found is not None else None


def list_definitions(conn: Connection) -> list[DefinitionRow]:
    rows = conn.execute(select(wd.c.name, wd.c.version, wd.c.created_at, wd.c.source)
                        .order_by(wd.c.name, wd.c.version)).mappings()
    return [from_mapping(DefinitionRow, r) for r in rows]
