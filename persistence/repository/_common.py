"""Helpers the query modules share: insert-or-ignore, prebuilt UPDATE statements, bound ids.

The statements of the per-step hot path are built once, with bound parameters, and reused: their
compiled form is cached by SQLAlchemy, so executing one costs no statement construction and no
cache-key walk (profiling showed those as a third of the coordinator's CPU per step).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Table, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert, Update

from ..fastpath import flush
from ..models import run_steps, runs

RUN_ID: Any = bindparam("p_run_id", type_=String())
_INSERT_IGNORE: dict[tuple[str, str], Insert] = {}
_UPDATES: dict[tuple[str, bool, tuple[str, ...]], Update] = {}


def insert_ignore(conn: Connection, table: Table, values: dict[str, Any] | list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING; returns the number of rows inserted."""
    flush(conn)
    key = (conn.dialect.name, table.name)
    statement = _INSERT_IGNORE.get(key)
    if statement is None:
        dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = _INSERT_IGNORE[key] = dialect.insert(table).on_conflict_do_nothing()
    result = conn.execute(statement, values)
    return result.rowcount or 0


def update_statement(table: Table, many: bool, columns: tuple[str, ...]) -> Update:
    """UPDATE of ``columns`` of one run (``runs``) or of named steps of a run (``run_steps``)."""
    key = (table.name, many, columns)
    statement = _UPDATES.get(key)
    if statement is None:
        if table is runs:
            where = [runs.c.id == RUN_ID]
        elif many:
            where = [run_steps.c.run_id == RUN_ID, run_steps.c.step.in_(bindparam("p_steps", expanding=True))]
        else:
            where = [run_steps.c.run_id == RUN_ID, run_steps.c.step == bindparam("p_step")]
        statement = _UPDATES[key] = update(table).where(*where).values(
            {name: bindparam(f"v_{name}", type_=table.c[name].type) for name in columns})
    return statement


def set_values(values: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The sorted column names of an update and their bound parameters."""
    columns = tuple(sorted(values))
    return columns, {f"v_{name}": values[name] for name in columns}
