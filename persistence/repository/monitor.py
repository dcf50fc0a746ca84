"""Queries of the result monitor: what the runs of a window came to, step by step, and the dead
letters of that window. Read-only; ``ops.monitor.results`` shapes the figures for the faces.

The window is "the runs created at or after ``since``" (``ix_runs_created_at`` finds them),
optionally of one workflow; the steps and attempts of those runs belong to the window with them,
whenever they ran. Dead letters are counted by their own ``created_at`` and for every workflow: an
archived message is kept with its queue and reason code, not a workflow (often the workflow is
unknown, or is what was wrong with it).

Durations are in milliseconds:

    run duration   runs.finished_at - runs.started_at, of the completed runs (succeeded or failed;
                   cancelled and running ones are left out)
    attempt        step_attempts.duration_ms, as the executor measured it, of every recorded attempt
    queue wait     step_attempts.started_at - run_steps.queued_at, see ``queue_waits``

Percentiles are continuous: linear interpolation between the two nearest ranks, which is what
Postgres' ``percentile_cont`` computes (and numpy's default method). On Postgres the database
computes them (``percentile_cont(f) WITHIN GROUP (ORDER BY ...)``); SQLite has no ordered-set
aggregates, so there the durations of the window are fetched and ``percentile`` computes them in
Python by the same definition. ``in_sql=False`` takes the Python path on Postgres too (the
benchmark checks that both agree). Values are rounded to the microsecond the timestamps hold.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Float, and_, case, cast, extract, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from miniflow.protocol.errors import StepLost
from miniflow.protocol.states import RunStatus

from ..fastpath import flush
from ..models import dead_letters, run_steps, runs, step_attempts

FRACTIONS = (0.5, 0.95, 0.99)
COMPLETED = (RunStatus.SUCCEEDED, RunStatus.FAILED)  # the runs that ran their course
StepKey = tuple[str, str]  # (workflow, step)


@dataclass(frozen=True, slots=True)
class Percentiles:
    """p50/p95/p99 of ``count`` values in milliseconds; all None when there are none."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


@dataclass(frozen=True, slots=True)
class StepCounts:
    """The steps of one (workflow, step) in the window: how many are in each status, and how many
    attempts were dispatched for the ``dispatched`` ones (those queued at least once)."""

    by_status: dict[str, int] = field(default_factory=dict)
    dispatched: int = 0
    attempts: int = 0
    max_attempts: int = 0


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """Every figure of a window, keyed by workflow or by (workflow, step); absent keys mean zero."""

    runs_by_status: dict[tuple[str, str], int]  # (workflow, status) -> runs
    run_durations: dict[str, Percentiles]  # workflow -> durations of its completed runs
    steps: dict[StepKey, StepCounts]
    attempt_durations: dict[StepKey, Percentiles]  # every recorded attempt
    queue_waits: dict[StepKey, Percentiles]
    errors: dict[tuple[str, str, str | None], int]  # (workflow, step, error_type) -> failed attempts
    dead_letters: dict[str, int]  # reason code -> letters


def window_figures(conn: Connection, since: datetime, workflow: str | None = None,
                   in_sql: bool | None = None) -> WindowFigures:
    """All the figures of the runs created at or after ``since`` (aware), of ``workflow`` or of all.
    ``in_sql``: percentiles computed by the database (default: on Postgres only)."""
    if since.tzinfo is None:
        raise ValueError("since must be an aware datetime (a naive one is ambiguous)")
    since = since.astimezone(UTC)  # SQLite compares the stored UTC text
    in_sql = conn.dialect.name == "postgresql" if in_sql is None else in_sql
    flush(conn)
    return WindowFigures(
        runs_by_status=run_status_counts(conn, since, workflow),
        run_durations=run_durations(conn, since, workflow, in_sql),
        steps=step_counts(conn, since, workflow),
        attempt_durations=attempt_durations(conn, since, workflow, in_sql),
        queue_waits=queue_waits(conn, since, workflow, in_sql),
        errors=error_counts(conn, since, workflow),
        dead_letters=dead_letter_counts(conn, since),
    )


def _in_window(query: Select[Any], since: datetime, workflow: str | None) -> Select[Any]:
    query = query.where(runs.c.created_at >= since)
    return query.where(runs.c.workflow == workflow) if workflow is not None else query


def run_status_counts(conn: Connection, since: datetime, workflow: str | None) -> dict[tuple[str, str], int]:
    query = _in_window(select(runs.c.workflow, runs.c.status, func.count()), since, workflow)
    rows = conn.execute(query.group_by(runs.c.workflow, runs.c.status))
    return {(str(w), str(s)): int(n) for w, s, n in rows}


def run_durations(conn: Connection, since: datetime, workflow: str | None, in_sql: bool) -> dict[str, Percentiles]:
    """Durations of the completed runs by workflow (a run's started_at is its created_at)."""
    completed = and_(runs.c.status.in_(COMPLETED), runs.c.started_at.is_not(None), runs.c.finished_at.is_not(None))
    if in_sql:
        ms = _ms_between(runs.c.started_at, runs.c.finished_at)
        query = _in_window(select(runs.c.workflow, func.count(), *_percentile_columns(ms)), since, workflow)
        return {str(w): _percentiles_of_row(n, ps) for w, n, *ps in
                conn.execute(query.where(completed).group_by(runs.c.workflow))}
    query = _in_window(select(runs.c.workflow, runs.c.started_at, runs.c.finished_at), since, workflow)
    values: dict[str, list[float]] = defaultdict(list)
    for w, started, finished in conn.execute(query.where(completed)):
        values[str(w)].append(_ms(finished - started))
    return {w: percentiles(v) for w, v in values.items()}


def step_counts(conn: Connection, since: datetime, workflow: str | None) -> dict[StepKey, StepCounts]:
    """Steps by status, and the attempts dispatched per step: ``run_steps.attempt`` is the number of
    the step's latest attempt, and attempt numbers count from 1 and grow by one with each retry
    (automatic, or of the run), so it counts the attempts dispatched, one in flight included."""
    dispatched = case((run_steps.c.attempt > 0, 1), else_=0)
    query = _in_window(select(runs.c.workflow, run_steps.c.step, run_steps.c.status, func.count(),
                              func.sum(dispatched), func.sum(run_steps.c.attempt), func.max(run_steps.c.attempt))
                       .select_from(runs.join(run_steps, run_steps.c.run_id == runs.c.id)), since, workflow)
    parts: dict[StepKey, list[tuple[str, int, int, int, int]]] = defaultdict(list)
    for w, step, status, n, sent, total, top in conn.execute(
            query.group_by(runs.c.workflow, run_steps.c.step, run_steps.c.status)):
        parts[(str(w), str(step))].append((str(status), int(n), int(sent or 0), int(total or 0), int(top or 0)))
    return {key: StepCounts(by_status={status: n for status, n, *_ in rows}, dispatched=sum(r[2] for r in rows),
                            attempts=sum(r[3] for r in rows), max_attempts=max(r[4] for r in rows))
            for key, rows in parts.items()}


def attempt_durations(conn: Connection, since: datetime, workflow: str | None,
                      in_sql: bool) -> dict[StepKey, Percentiles]:
    joined = runs.join(step_attempts, step_attempts.c.run_id == runs.c.id)
    keys = (runs.c.workflow, step_attempts.c.step)
    if in_sql:
        columns = _percentile_columns(step_attempts.c.duration_ms)
        query = _in_window(select(*keys, func.count(), *columns).select_from(joined), since, workflow)
        return {(str(w), str(s)): _percentiles_of_row(n, ps) for w, s, n, *ps in conn.execute(query.group_by(*keys))}
    query = _in_window(select(*keys, step_attempts.c.duration_ms).select_from(joined), since, workflow)
    values: dict[StepKey, list[float]] = defaultdict(list)
    for w, s, ms_value in conn.execute(query):
        values[(str(w), str(s))].append(float(ms_value))
    return {key: percentiles(v) for key, v in values.items()}


def queue_waits(conn: Connection, since: datetime, workflow: str | None, in_sql: bool) -> dict[StepKey, Percentiles]:
    """How long a dispatched step waited before an executor started it: from ``run_steps.queued_at``
    (the coordinator committed the step's message to the outbox; the relay publishes it right after)
    to ``step_attempts.started_at`` (an executor began the attempt, by the executor's clock). It
    spans the outbox, the broker queue, and the wait for a free executor thread; the two clocks'
    skew is in it too, and it is not clamped, so a negative value shows the clocks disagree.

    ``run_steps`` keeps the queued_at of a step's latest attempt only, so a step counts once, by
    that attempt, and only when it is the first attempt of its retry budget (attempt =
    first_attempt): a retry's message is published with its backoff delay, which is not queueing.
    Attempts the reconciler recorded as lost (error type ``Lost``) have no real start and are left out."""
    joined = runs.join(run_steps, run_steps.c.run_id == runs.c.id).join(step_attempts, and_(
        step_attempts.c.run_id == run_steps.c.run_id, step_attempts.c.step == run_steps.c.step,
        step_attempts.c.attempt == run_steps.c.attempt))
    measured = and_(run_steps.c.attempt == run_steps.c.first_attempt,
                    or_(step_attempts.c.error_type.is_(None), step_attempts.c.error_type != StepLost.error_type))
    keys = (runs.c.workflow, run_steps.c.step)
    queued = run_steps.c.queued_at.is_not(None)
    if in_sql:
        # The conditions filter the aggregates rather than the rows: as a WHERE clause, Postgres
        # estimates attempt = first_attempt (two columns) to keep 0.5% of the rows, where it keeps
        # nearly all, and picks nested loops that are slower on wide windows (docs/result-monitor.md).
        ms = _ms_between(run_steps.c.queued_at, step_attempts.c.started_at)
        columns = [func.count().filter(measured), *(c.filter(measured) for c in _percentile_columns(ms))]
        query = _in_window(select(*keys, *columns).select_from(joined), since, workflow)
        return {(str(w), str(s)): _percentiles_of_row(n, ps)
                for w, s, n, *ps in conn.execute(query.where(queued).group_by(*keys)) if n}
    query = _in_window(select(*keys, run_steps.c.queued_at, step_attempts.c.started_at).select_from(joined),
                       since, workflow)
    values: dict[StepKey, list[float]] = defaultdict(list)
    for w, s, queued_at, started in conn.execute(query.where(queued, measured)):
        values[(str(w), str(s))].append(_ms(started - queued_at))
    return {key: percentiles(v) for key, v in values.items()}


def error_counts(conn: Connection, since: datetime, workflow: str | None) -> dict[tuple[str, str, str | None], int]:
    """Failed attempts by (workflow, step, error_type); every one, the top N is chosen above."""
    keys = (runs.c.workflow, step_attempts.c.step, step_attempts.c.error_type)
    query = _in_window(select(*keys, func.count()).select_from(runs.join(step_attempts,
                                                                         step_attempts.c.run_id == runs.c.id)),
                       since, workflow)
    rows = conn.execute(query.where(step_attempts.c.ok.is_(False)).group_by(*keys))
    return {(str(w), str(s), str(e) if e is not None else None): int(n) for w, s, e, n in rows}


def dead_letter_counts(conn: Connection, since: datetime) -> dict[str, int]:
    """Dead letters archived at or after ``since``, by reason code (of every workflow)."""
    query = (select(dead_letters.c.code, func.count()).where(dead_letters.c.created_at >= since)
             .group_by(dead_letters.c.code))
    return {str(code): int(n) for code, n in conn.execute(query)}


# -- percentiles ----------------------------------------------------------------------------------
def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The continuous percentile of sorted values (as percentile_cont): the value at rank
    ``fraction * (n - 1)``, interpolated linearly between its two neighbours."""
    if not ordered:
        raise ValueError("no values")
    rank = fraction * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: Iterable[float]) -> Percentiles:
    ordered = sorted(values)
    if not ordered:
        return Percentiles()
    p50, p95, p99 = (round(percentile(ordered, f), 3) for f in FRACTIONS)
    return Percentiles(len(ordered), p50, p95, p99)


def _percentile_columns(value: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    return [func.percentile_cont(f).within_group(value) for f in FRACTIONS]


def _percentiles_of_row(count: int, values: Sequence[float | None]) -> Percentiles:
    p50, p95, p99 = (round(float(v), 3) if v is not None else None for v in values)
    return Percentiles(int(count), p50, p95, p99)


def _ms_between(start: ColumnElement[Any], end: ColumnElement[Any]) -> ColumnElement[Any]:
    """Postgres: milliseconds from ``start`` to ``end``, as a double (the interval's epoch is exact)."""
    return cast(extract("epoch", end - start) * 1000, Float)


def _ms(delta: timedelta) -> float:
    return delta / timedelta(milliseconds=1)
