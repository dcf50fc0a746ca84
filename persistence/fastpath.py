"""The Postgres fast path of the per-step hot loop: fewer round trips, no re-parsing.

Two techniques, both Postgres-only (SQLite runs the plain queries of the repository):

- **Batched writes.** Inside ``batched_writes(conn)`` the run/step updates and outbox inserts of
  one advance are collected and sent together in one round trip when the block ends, or earlier,
  as soon as any other repository query runs (each calls :func:`flush` first, so nothing is read
  stale or reordered).
- **Prepared statements.** Locking a run, recording an attempt and reading the run with the
  attempt's step is one call of two server-side prepared statements (:func:`record_and_read`). Parsing and
  planning were half of that call's time; they are prepared once per database session.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .models import run_steps, runs, step_attempts

_BATCH = "miniflow.write_batch"
_PREPARED = "miniflow.prepared"
_OUTBOX_COLUMNS = ("message_id", "queue_name", "body", "delay_ms", "created_at")


# -- batched writes -------------------------------------------------------------------------------
@contextlib.contextmanager
def batched_writes(conn: Connection) -> Iterator[None]:
    """Collect this block's run/step updates and outbox inserts and send them in one round trip on
    Postgres; elsewhere they run at once."""
    if conn.dialect.name != "postgresql" or _BATCH in conn.info:
        yield
        return
    conn.info[_BATCH] = ([], {})
    try:
        yield
        flush(conn)
    finally:
        conn.info.pop(_BATCH, None)


def flush(conn: Connection) -> None:
    """Send the writes collected so far (every repository query calls this first)."""
    batch = conn.info.get(_BATCH)
    if batch and batch[0]:
        statements, params = batch
        sql = "; ".join(statements)
        bound = dict(params)
        statements.clear()
        params.clear()
        conn.exec_driver_sql(sql, bound)


def query_after_batch(conn: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
    """Send the writes collected so far and then ``sql`` (a Postgres statement with ``%(name)s``
    parameters, named apart from the batch's ``w``/``o`` ones) in one round trip; its rows."""
    batch = conn.info.get(_BATCH)
    if batch and batch[0]:
        statements, bound = batch
        sql = "; ".join([*statements, sql])
        params = {**bound, **params}
        statements.clear()
        bound.clear()
    return list(conn.exec_driver_sql(sql, params).mappings())


def batch_update(conn: Connection, table: Table, run_id: str, steps: Sequence[str] | None,
                 values: dict[str, Any]) -> bool:
    """Collect an UPDATE of a run (``runs``) or of some steps of a run (``run_steps``); False when
    no batch is open (the caller runs the statement itself)."""
    batch = conn.info.get(_BATCH)
    if batch is None:
        return False
    statements, params = batch
    n = len(statements)
    sets = []
    for name in sorted(values):
        key = f"w{n}_{name}"
        if isinstance(table.c[name].type, JSON):
            params[key] = None if values[name] is None else json.dumps(values[name])
            sets.append(f"{name} = %({key})s::jsonb")
        else:
            params[key] = values[name]
            sets.append(f"{name} = %({key})s")
    params[f"w{n}_run"] = run_id
    if table is runs:
        where = f"id = %(w{n}_run)s"
    else:
        params[f"w{n}_steps"] = list(steps or [])
        where = f"run_id = %(w{n}_run)s AND step = ANY(%(w{n}_steps)s)"
    statements.append(f"UPDATE {table.name} SET {', '.join(sets)} WHERE {where}")
    return True


def batch_outbox(conn: Connection, rows: Sequence[dict[str, Any]]) -> bool:
    """Collect an INSERT of outbox rows; False when no batch is open."""
    batch = conn.info.get(_BATCH)
    if batch is None:
        return False
    statements, params = batch
    n = len(statements)
    values = []
    for i, row in enumerate(rows):
        for column in _OUTBOX_COLUMNS:
            params[f"o{n}_{i}_{column}"] = row.get(column)
        values.append("(" + ", ".join(f"%(o{n}_{i}_{c})s" for c in _OUTBOX_COLUMNS) + ")")
    statements.append(f"INSERT INTO outbox ({', '.join(_OUTBOX_COLUMNS)}) VALUES " + ", ".join(values))
    return True


# -- lock, record and read in one call ------------------------------------------------------------
_ATTEMPT_COLUMNS = [c.name for c in step_attempts.c if c.name != "id"]
_LOCK = "SELECT 1 FROM runs WHERE id = $1 FOR UPDATE"
_RECORD = (
    "WITH ins AS (INSERT INTO step_attempts (" + ", ".join(_ATTEMPT_COLUMNS) + ") SELECT "
    + ", ".join(f"${i}::jsonb" if c == "output" else f"${i}" for i, c in enumerate(_ATTEMPT_COLUMNS, 1))
    + " WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1)"
    " ON CONFLICT (run_id, step, attempt) DO NOTHING RETURNING 1) "
    "SELECT (SELECT count(*) FROM ins) AS inserted, "
    + ", ".join(f"r.{c.name} AS r_{c.name}" for c in runs.c) + ", "
    + ", ".join(f"s.{c.name} AS s_{c.name}" for c in run_steps.c)
    + " FROM runs r LEFT JOIN run_steps s ON s.run_id = r.id AND s.step = $"
    + str(_ATTEMPT_COLUMNS.index("step") + 1) + " WHERE r.id = $1")
_PARAM_TYPES = {"run_id": "varchar", "step": "varchar", "attempt": "integer", "ok": "boolean", "output": "text",
                "error": "text", "error_type": "varchar", "node": "varchar", "traceback": "text",
                "started_at": "timestamptz", "finished_at": "timestamptz", "duration_ms": "double precision",
                "recorded_at": "timestamptz"}
_PREPARE = {
    "miniflow_lock_run": f"PREPARE miniflow_lock_run (varchar) AS {_LOCK}",
    # v3: reads only the attempt's step (v2, prepared by older code in its sessions, read them all)
    "miniflow_record_attempt_v3": "PREPARE miniflow_record_attempt_v3 ("
    + ", ".join(_PARAM_TYPES[c] for c in _ATTEMPT_COLUMNS) + f") AS {_RECORD}",
}
# The lock, then (a statement of its own, so that it reads after the lock is granted, not from a
# snapshot taken before) the insert and the read.
_EXECUTE = ("EXECUTE miniflow_lock_run(%(a_run_id)s); EXECUTE miniflow_record_attempt_v3("
            + ", ".join(f"%(a_{c})s" for c in _ATTEMPT_COLUMNS) + ")")


def record_and_read(conn: Connection, attempt: dict[str, Any]
                    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], bool]:
    """Lock the attempt's run, record the attempt once and read the run with the attempt's step, in
    one round trip: (run columns or None, [step columns] or [], whether this call recorded it)."""
    flush(conn)
    params = {f"a_{k}": (json.dumps(v) if k == "output" else v) for k, v in attempt.items()}
    _prepare(conn, _PREPARE)
    try:
        rows = list(conn.exec_driver_sql(_EXECUTE, params).mappings())
    except DBAPIError as exc:
        if getattr(exc.orig, "pgcode", None) == "26000":  # the session lost them: prepare again next time
            conn.info.pop(_PREPARED, None)
        raise
    run: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = []
    inserted = False
    for row in rows:
        if run is None:
            run = {c.name: row[f"r_{c.name}"] for c in runs.c}
            inserted = bool(row["inserted"])
        if row["s_step"] is not None:
            steps.append({c.name: row[f"s_{c.name}"] for c in run_steps.c})
    return run, steps, inserted


def _prepare(conn: Connection, statements: dict[str, str]) -> None:
    """Prepare the named statements (name -> PREPARE command) on this connection unless it has them:
    prepared statements live as long as the session, which ``conn.info`` follows, and a rollback
    keeps them."""
    known: set[str] | None = conn.info.get(_PREPARED)
    if known is None:
        known = conn.info[_PREPARED] = {name for (name,) in conn.exec_driver_sql(
            "SELECT name FROM pg_prepared_statements WHERE name LIKE 'miniflow_%%'")}
    missing = [name for name in statements if name not in known]
    if missing:
        try:
            conn.exec_driver_sql("; ".join(statements[name] for name in missing))
        except DBAPIError:  # some may exist now: ask the server again next time
            conn.info.pop(_PREPARED, None)
            raise
        known.update(missing)
