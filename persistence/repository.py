"""Queries, in SQLAlchemy Core, each run inside a transaction the caller owns.

Nothing here commits: callers hold ``Database.transaction()`` so that a state change and the
outbox rows it implies commit together. Durable dedupe is done by unique keys with
INSERT ... ON CONFLICT DO NOTHING (Postgres and SQLite alike).

The statements of the per-step hot path are built once, with bound parameters, and reused: their
compiled form is cached by SQLAlchemy, so executing one costs no statement construction and no
cache-key walk (profiling showed those as a third of the coordinator's CPU per step).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, String, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError

from .models import dead_letters, handled_requests, outbox, run_steps, runs, step_attempts, workflow_definitions


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


_INSERT_IGNORE: dict[tuple[str, str], Any] = {}


def insert_ignore(conn: Connection, table: Any, values: dict[str, Any] | list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING; returns the number of rows inserted."""
    _flush(conn)
    key = (conn.dialect.name, table.name)
    statement = _INSERT_IGNORE.get(key)
    if statement is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = _INSERT_IGNORE[key] = dialect.insert(table).on_conflict_do_nothing()
    result = conn.execute(statement, values)
    return result.rowcount or 0


# -- prebuilt statements of the hot path ----------------------------------------------------------
_RUN_ID: Any = bindparam("p_run_id", type_=String())
_SELECT_RUN = select(runs).where(runs.c.id == _RUN_ID)
_LOCK_RUN = _SELECT_RUN.with_for_update()
_RUN_FOR_KEY = select(runs.c.id).where(runs.c.idempotency_key == bindparam("p_key"))
_SELECT_STEPS = select(run_steps).where(run_steps.c.run_id == _RUN_ID)
_INSERT_STEPS = insert(run_steps)
_INSERT_OUTBOX = insert(outbox)
_DELETE_OUTBOX = delete(outbox).where(outbox.c.message_id.in_(bindparam("p_ids", expanding=True)))
_UPDATES: dict[tuple[str, bool, tuple[str, ...]], Any] = {}


def _update(table: Any, many: bool, columns: tuple[str, ...]) -> Any:
    """UPDATE of ``columns`` of one run (``runs``) or of named steps of a run (``run_steps``)."""
    key = (table.name, many, columns)
    statement = _UPDATES.get(key)
    if statement is None:
        if table is runs:
            where = [runs.c.id == _RUN_ID]
        elif many:
            where = [run_steps.c.run_id == _RUN_ID, run_steps.c.step.in_(bindparam("p_steps", expanding=True))]
        else:
            where = [run_steps.c.run_id == _RUN_ID, run_steps.c.step == bindparam("p_step")]
        statement = _UPDATES[key] = update(table).where(*where).values(
            {name: bindparam(f"v_{name}", type_=table.c[name].type) for name in columns})
    return statement


# -- workflow definitions -------------------------------------------------------------------------
def spec_checksum(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_definition(conn: Connection, name: str, spec: dict[str, Any], source: str | None,
                    version: int | None = None) -> tuple[int, bool]:
    """Store a definition as a new version unless the latest one is identical.

    Returns (version, created). Versions are immutable: asking for an existing version number with
    a different spec raises ValueError.
    """
    checksum = spec_checksum(spec)
    if version is not None:
        existing = conn.execute(select(workflow_definitions.c.checksum).where(
            workflow_definitions.c.name == name, workflow_definitions.c.version == version)).scalar()
        if existing is not None:
            if existing != checksum:
                raise ValueError(f"workflow {name!r} version {version} is already deployed with a "
                                 "different definition; versions are immutable: bump the version")
            return version, False
    else:
        latest = conn.execute(
            select(workflow_definitions.c.version, workflow_definitions.c.checksum)
            .where(workflow_definitions.c.name == name)
            .order_by(workflow_definitions.c.version.desc()).limit(1)).first()
        if latest is not None and latest.checksum == checksum:
            return latest.version, False
        version = (latest.version + 1) if latest is not None else 1
    conn.execute(insert(workflow_definitions).values(
        name=name, version=version, spec=spec, checksum=checksum, source=source, created_at=utcnow()))
    return version, True


def get_definition(conn: Connection, name: str, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """(version, spec) of a deployed workflow: the given version, or the latest."""
    _flush(conn)
    query = select(workflow_definitions.c.version, workflow_definitions.c.spec).where(
        workflow_definitions.c.name == name)
    if version is not None:
        query = query.where(workflow_definitions.c.version == version)
    row = conn.execute(query.order_by(workflow_definitions.c.version.desc()).limit(1)).first()
    return (row.version, row.spec) if row is not None else None


_LATEST_VERSION = select(func.max(workflow_definitions.c.version)).where(
    workflow_definitions.c.name == bindparam("p_name", type_=String()))


def latest_version(conn: Connection, name: str) -> int | None:
    """The latest deployed version of a workflow (None if it is not deployed)."""
    _flush(conn)
    return conn.execute(_LATEST_VERSION, {"p_name": name}).scalar()


def list_definitions(conn: Connection) -> list[RowMapping]:
    return list(conn.execute(
        select(workflow_definitions.c.name, workflow_definitions.c.version,
               workflow_definitions.c.created_at, workflow_definitions.c.source)
        .order_by(workflow_definitions.c.name, workflow_definitions.c.version)).mappings())


# -- runs and their steps -------------------------------------------------------------------------
def insert_run(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert a run unless its idempotency key exists; True when this call created it."""
    return insert_ignore(conn, runs, values) == 1


def run_id_for_key(conn: Connection, idempotency_key: str) -> str | None:
    _flush(conn)
    return conn.execute(_RUN_FOR_KEY, {"p_key": idempotency_key}).scalar()


def lock_run(conn: Connection, run_id: str) -> RowMapping | None:
    """The run row, locked until the transaction ends (FOR UPDATE on Postgres)."""
    _flush(conn)
    query = _LOCK_RUN if conn.dialect.name == "postgresql" else _SELECT_RUN
    return conn.execute(query, {"p_run_id": run_id}).mappings().first()


def record_and_lock(conn: Connection, attempt: dict[str, Any]) -> tuple[Any, dict[str, Any], bool]:
    """Lock the attempt's run, record the attempt once, read the run and its steps: returns
    (run or None, steps by name, whether this call recorded the attempt).

    On Postgres it is one round trip: the lock, then (in a statement of its own, so that it reads
    after the lock is granted, not from a snapshot taken before) the insert and the read. An
    attempt of a run that does not exist is not inserted."""
    if conn.dialect.name != "postgresql":
        locked = lock_run(conn, attempt["run_id"])
        if locked is None:
            return None, {}, False
        recorded = insert_attempt(conn, attempt)
        return locked, get_steps(conn, attempt["run_id"]), recorded
    _flush(conn)
    params = {f"a_{k}": (json.dumps(v) if k == "output" else v) for k, v in attempt.items()}
    run: dict[str, Any] | None = None
    steps: dict[str, Any] = {}
    inserted = False
    _prepare(conn, _PG_PREPARE)
    try:
        rows = list(conn.exec_driver_sql(_PG_EXECUTE_RECORD, params).mappings())
    except DBAPIError as exc:
        if getattr(exc.orig, "pgcode", None) == "26000":  # the session lost them: ask again next time
            conn.info.pop(_PREPARED, None)
        raise
    for row in rows:
        if run is None:
            run = {c.name: row[f"r_{c.name}"] for c in runs.c}
            inserted = bool(row["inserted"])
        if row["s_step"] is not None:
            steps[row["s_step"]] = {c.name: row[f"s_{c.name}"] for c in run_steps.c}
    return run, steps, inserted


_ATTEMPT_COLUMNS = [c.name for c in step_attempts.c if c.name != "id"]
_PG_LOCK = "SELECT 1 FROM runs WHERE id = $1 FOR UPDATE"
_PG_RECORD = (
    "WITH ins AS (INSERT INTO step_attempts (" + ", ".join(_ATTEMPT_COLUMNS) + ") SELECT "
    + ", ".join(f"${i}::jsonb" if c == "output" else f"${i}" for i, c in enumerate(_ATTEMPT_COLUMNS, 1))
    + " WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1)"
    " ON CONFLICT (run_id, step, attempt) DO NOTHING RETURNING 1) "
    "SELECT (SELECT count(*) FROM ins) AS inserted, "
    + ", ".join(f"r.{c.name} AS r_{c.name}" for c in runs.c) + ", "
    + ", ".join(f"s.{c.name} AS s_{c.name}" for c in run_steps.c)
    + " FROM runs r LEFT JOIN run_steps s ON s.run_id = r.id WHERE r.id = $1")
_PG_PARAM_TYPES = {"run_id": "varchar", "step": "varchar", "attempt": "integer", "ok": "boolean", "output": "text",
                   "error": "text", "error_type": "varchar", "node": "varchar", "started_at": "timestamptz",
                   "finished_at": "timestamptz", "duration_ms": "double precision", "recorded_at": "timestamptz"}
# Server-side prepared once per connection: parsing and planning were half of this call's time.
_PG_PREPARE = {
    "miniflow_lock_run": f"PREPARE miniflow_lock_run (varchar) AS {_PG_LOCK}",
    "miniflow_record_attempt": "PREPARE miniflow_record_attempt ("
    + ", ".join(_PG_PARAM_TYPES[c] for c in _ATTEMPT_COLUMNS) + f") AS {_PG_RECORD}",
}
# The lock, then (a statement of its own, reading after the lock is granted) the insert and read.
_PG_EXECUTE_RECORD = ("EXECUTE miniflow_lock_run(%(a_run_id)s); EXECUTE miniflow_record_attempt("
                      + ", ".join(f"%(a_{c})s" for c in _ATTEMPT_COLUMNS) + ")")
_PREPARED = "miniflow.prepared"


def _prepare(conn: Connection, statements: dict[str, str]) -> None:
    """Prepare the named statements (name -> PREPARE command) on this database connection unless it
    has them: prepared statements live as long as the session, which ``conn.info`` follows, and a
    rollback keeps them."""
    known: set[str] | None = conn.info.get(_PREPARED)
    if known is None:
        known = conn.info[_PREPARED] = {name for (name,) in conn.exec_driver_sql(
            "SELECT name FROM pg_prepared_statements WHERE name LIKE 'miniflow_%%'")}
    missing = [name for name in statements if name not in known]
    if missing:
        try:
            conn.exec_driver_sql("; ".join(statements[name] for name in missing))
        except Exception:  # some may exist now: ask the server again next time
            conn.info.pop(_PREPARED, None)
            raise
        known.update(missing)


# -- batched writes: the writes of one advance in one round trip on Postgres -------------------
_BATCH = "miniflow.write_batch"


@contextlib.contextmanager
def batched_writes(conn: Connection) -> Iterator[None]:
    """Inside, run/step updates and outbox inserts are collected and sent together on Postgres (one
    round trip) when the block ends, or earlier as soon as any other query of this module runs (each
    sends what was collected first, so nothing is read stale or reordered); elsewhere they run at once."""
    if conn.dialect.name != "postgresql" or _BATCH in conn.info:
        yield
        return
    conn.info[_BATCH] = ([], {})
    try:
        yield
        _flush(conn)
    finally:
        conn.info.pop(_BATCH, None)


def _flush(conn: Connection) -> None:
    batch = conn.info.get(_BATCH)
    if batch and batch[0]:
        statements, params = batch
        sql = "; ".join(statements)
        bound = dict(params)
        statements.clear()
        params.clear()
        conn.exec_driver_sql(sql, bound)


def _batched(conn: Connection, table: Any, run_id: str, steps: list[str] | None, values: dict[str, Any]) -> bool:
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


def _batched_outbox(conn: Connection, rows: Sequence[dict[str, Any]]) -> bool:
    batch = conn.info.get(_BATCH)
    if batch is None:
        return False
    statements, params = batch
    n = len(statements)
    values = []
    for i, row in enumerate(rows):
        for column in ("message_id", "queue_name", "body", "delay_ms", "created_at"):
            params[f"o{n}_{i}_{column}"] = row.get(column)
        values.append("(" + ", ".join(f"%(o{n}_{i}_{c})s" for c in
                                      ("message_id", "queue_name", "body", "delay_ms", "created_at")) + ")")
    statements.append("INSERT INTO outbox (message_id, queue_name, body, delay_ms, created_at) VALUES "
                      + ", ".join(values))
    return True


def lock_run_with_steps(conn: Connection, run_id: str) -> tuple[RowMapping | None, dict[str, RowMapping]]:
    """The run row, locked until the transaction ends, then its steps by name.

    Two statements on purpose: on Postgres a join locked FOR UPDATE OF runs would, after waiting
    for a concurrent transaction of the same run, re-check the run row but keep the step rows of
    its original snapshot, stale. Read after the lock, the steps are current (READ COMMITTED)."""
    run = lock_run(conn, run_id)
    return run, (get_steps(conn, run_id) if run is not None else {})


def overdue_run_ids(conn: Connection, now: datetime, limit: int = 100) -> list[str]:
    """Running runs whose workflow deadline has passed."""
    return list(conn.execute(select(runs.c.id).where(runs.c.status == "running", runs.c.deadline_at.is_not(None),
                                                     runs.c.deadline_at < now)
                             .order_by(runs.c.id).limit(limit)).scalars())  # one lock order for all coordinators


def unadvanced_attempts(conn: Connection, recorded_before: datetime, limit: int = 100) -> list[tuple[str, str, int]]:
    """(run, step, attempt) of running runs whose current attempt is recorded but the step is still
    queued: the step_finished that should have advanced the run never got through."""
    query = (select(run_steps.c.run_id, run_steps.c.step, run_steps.c.attempt)
             .join(runs, runs.c.id == run_steps.c.run_id)
             .join(step_attempts, (step_attempts.c.run_id == run_steps.c.run_id)
                   & (step_attempts.c.step == run_steps.c.step) & (step_attempts.c.attempt == run_steps.c.attempt))
             .where(runs.c.status == "running", run_steps.c.status == "queued",
                    step_attempts.c.recorded_at < recorded_before)
             .order_by(run_steps.c.run_id).limit(limit))
    return [(r, s, a) for r, s, a in conn.execute(query)]


def overdue_results(conn: Connection, now: datetime, limit: int = 100) -> list[tuple[str, str, int]]:
    """(run, step, attempt) of running runs whose queued attempt is past its result deadline with no
    result recorded."""
    recorded = (select(step_attempts.c.id).where(step_attempts.c.run_id == run_steps.c.run_id,
                                                 step_attempts.c.step == run_steps.c.step,
                                                 step_attempts.c.attempt == run_steps.c.attempt).exists())
    query = (select(run_steps.c.run_id, run_steps.c.step, run_steps.c.attempt)
             .join(runs, runs.c.id == run_steps.c.run_id)
             .where(run_steps.c.result_due_at < now, run_steps.c.status == "queued", runs.c.status == "running",
                    ~recorded)
             .order_by(run_steps.c.run_id).limit(limit))
    return [(r, s, a) for r, s, a in conn.execute(query)]


def get_run(conn: Connection, run_id: str) -> RowMapping | None:
    _flush(conn)
    return conn.execute(_SELECT_RUN, {"p_run_id": run_id}).mappings().first()


def _set(values: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    columns = tuple(sorted(values))
    return columns, {f"v_{name}": values[name] for name in columns}


def update_run(conn: Connection, run_id: str, **values: Any) -> None:
    if _batched(conn, runs, run_id, None, values):
        return
    columns, params = _set(values)
    conn.execute(_update(runs, False, columns), {"p_run_id": run_id, **params})


def insert_steps(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    _flush(conn)
    if rows:
        conn.execute(_INSERT_STEPS, list(rows))


def get_steps(conn: Connection, run_id: str) -> dict[str, RowMapping]:
    _flush(conn)
    rows = conn.execute(_SELECT_STEPS, {"p_run_id": run_id}).mappings()
    return {row["step"]: row for row in rows}


def update_step(conn: Connection, run_id: str, step: str, **values: Any) -> None:
    if _batched(conn, run_steps, run_id, [step], values):
        return
    columns, params = _set(values)
    conn.execute(_update(run_steps, False, columns), {"p_run_id": run_id, "p_step": step, **params})


def update_steps(conn: Connection, run_id: str, steps: Iterable[str], **values: Any) -> None:
    names = list(steps)
    if names and _batched(conn, run_steps, run_id, names, values):
        return
    if len(names) == 1:
        update_step(conn, run_id, names[0], **values)
    elif names:
        columns, params = _set(values)
        conn.execute(_update(run_steps, True, columns), {"p_run_id": run_id, "p_steps": names, **params})


def list_runs(conn: Connection, *, limit: int = 50, status: str | None = None,
              workflow: str | None = None) -> list[RowMapping]:
    query = select(runs).order_by(runs.c.created_at.desc()).limit(limit)
    if status:
        query = query.where(runs.c.status == status)
    if workflow:
        query = query.where(runs.c.workflow == workflow)
    return list(conn.execute(query).mappings())


def find_run(conn: Connection, prefix: str) -> RowMapping | None:
    """A run by id or by a unique id prefix (at least 6 characters)."""
    row = get_run(conn, prefix)
    if row is not None or len(prefix) < 6:
        return row
    rows = list(conn.execute(select(runs).where(runs.c.id.like(prefix.replace("%", "") + "%")).limit(2))
                .mappings())
    return rows[0] if len(rows) == 1 else None


# -- attempts -------------------------------------------------------------------------------------
def insert_attempt(conn: Connection, values: dict[str, Any]) -> bool:
    """Record an attempt once: True when this call recorded it, False when it was already there."""
    return insert_ignore(conn, step_attempts, values) == 1


def request_handled(conn: Connection, message_id: str) -> bool:
    """Whether the coordinator has acted on this request message."""
    _flush(conn)
    return conn.execute(select(handled_requests.c.message_id).where(
        handled_requests.c.message_id == message_id)).first() is not None


def prune_handled(conn: Connection, before: datetime, limit: int = 1000) -> int:
    """Forget request ids handled before ``before`` (at most ``limit`` per call); returns how many."""
    _flush(conn)
    oldest = (select(handled_requests.c.message_id).where(handled_requests.c.handled_at < before)
              .order_by(handled_requests.c.handled_at).limit(limit))
    return conn.execute(delete(handled_requests).where(handled_requests.c.message_id.in_(oldest))).rowcount or 0


def mark_handled(conn: Connection, message_id: str, kind: str, run_id: str, at: datetime) -> bool:
    """Remember that a request message was acted on; False if it already was (a redelivery)."""
    return insert_ignore(conn, handled_requests, {"message_id": message_id, "kind": kind, "run_id": run_id,
                                                  "handled_at": at}) == 1


def get_attempt(conn: Connection, run_id: str, step: str, attempt: int) -> RowMapping | None:
    _flush(conn)
    return conn.execute(select(step_attempts).where(
        step_attempts.c.run_id == run_id, step_attempts.c.step == step,
        step_attempts.c.attempt == attempt)).mappings().first()


def get_attempts(conn: Connection, run_id: str) -> list[RowMapping]:
    _flush(conn)
    return list(conn.execute(select(step_attempts).where(step_attempts.c.run_id == run_id)
                             .order_by(step_attempts.c.started_at, step_attempts.c.id)).mappings())


# -- outbox ---------------------------------------------------------------------------------------
def add_outbox(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows and not _batched_outbox(conn, rows):
        conn.execute(_INSERT_OUTBOX, list(rows))


def delete_outbox(conn: Connection, message_ids: Sequence[str]) -> None:
    _flush(conn)
    if message_ids:
        conn.execute(_DELETE_OUTBOX, {"p_ids": list(message_ids)})


def claim_stale_outbox(conn: Connection, older_than: datetime, limit: int = 500) -> list[RowMapping]:
    """Outbox rows older than a cut-off (their publisher likely died), locked against other relays."""
    query = (select(outbox).where(outbox.c.created_at < older_than)
             .order_by(outbox.c.created_at).limit(limit))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(conn.execute(query).mappings())


def count_outbox(conn: Connection) -> int:
    _flush(conn)
    return int(conn.execute(select(func.count()).select_from(outbox)).scalar() or 0)


# -- dead letters ---------------------------------------------------------------------------------
def insert_dead_letter(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(insert(dead_letters).values(created_at=utcnow(), **values))


def dead_letters_for_message(conn: Connection, message_id: str) -> list[RowMapping]:
    return list(conn.execute(select(dead_letters).where(dead_letters.c.message_id == message_id)
                             .order_by(dead_letters.c.id)).mappings())


def list_dead_letters(conn: Connection, limit: int = 50) -> list[RowMapping]:
    return list(conn.execute(select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit))
                .mappings())


__all__ = [
    "IntegrityError", "add_outbox", "as_utc", "claim_stale_outbox", "count_outbox", "dead_letters_for_message",
    "delete_outbox",
    "find_run", "get_attempt", "overdue_run_ids", "get_attempts", "get_definition", "get_run", "get_steps",
    "insert_attempt", "insert_dead_letter", "insert_run", "insert_steps", "list_dead_letters",
    "list_definitions", "list_runs", "lock_run", "run_id_for_key", "save_definition", "spec_checksum",
    "update_run", "update_step", "update_steps", "utcnow",
]
