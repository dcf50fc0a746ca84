"""The result monitor's queries on 100,000 runs in Postgres: how long ``result_summary`` takes for
the last hour, the last day and every run, and whether an index would make it faster.

Creates a scratch database (bench/harness.py), migrates it, and writes the rows with COPY as the
coordinator would have left them: ``--runs`` runs spread evenly over ``--days`` days up to now, of
3 workflows of 5 chained steps; ~5% of runs fail (a step failing its 3 attempts), ~0.5% are
cancelled, ~3% of steps succeed on a second attempt after a 1 s backoff, the runs of the last two
minutes are still running; and ``--letters`` dead letters over the same span. Then it times, as the
median of ``--repeat`` calls after a warm-up:

    result_summary per window (hour, day, all), and with a workflow filter;
    each query of the day window alone;
    the day window with the percentiles computed in Python (the SQLite path), checked to agree;
    the same windows with each candidate index of CANDIDATES added, one at a time.

    .venv/bin/python -m bench.monitor_queries [--runs 100000] [--days 7] [--repeat 5] [--explain]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, text

from bench.harness import scratch_database
from miniflow.ops.monitor.results import result_summary
from miniflow.persistence import Database
from miniflow.persistence.repository import monitor
from miniflow.protocol.clock import utcnow

WORKFLOWS = {
    "etl": [("extract", 400), ("clean", 150), ("join", 900), ("aggregate", 300), ("load", 600)],
    "report": [("query", 1200), ("render", 250), ("pdf", 800), ("upload", 120), ("notify", 30)],
    "billing": [("collect", 200), ("price", 80), ("invoice", 150), ("charge", 500), ("email", 40)],
}
ERRORS = ["ValueError", "KeyError", "Timeout", "ConnectionError", "Lost"]
CODES = ["malformed", "unsigned", "unknown_workflow", "retries_exhausted", "bad_signature", "queue_mismatch"]
# name -> (create, drop): indexes tried one at a time against the migrated schema
CANDIDATES = {
    "runs(workflow, created_at)": ("CREATE INDEX bench_runs_workflow_created ON runs (workflow, created_at)",
                                   "DROP INDEX bench_runs_workflow_created"),
    "runs(created_at) covering": ("CREATE INDEX bench_runs_created_cover ON runs (created_at) "
                                  "INCLUDE (workflow, status, started_at, finished_at)",
                                  "DROP INDEX bench_runs_created_cover"),
}
RUN_COLUMNS = "id, workflow, version, status, params, idempotency_key, priority, error, created_at, started_at, " \
              "finished_at"
STEP_COLUMNS = "run_id, step, status, attempt, first_attempt, error, node, queued_at, started_at, finished_at"
ATTEMPT_COLUMNS = "run_id, step, attempt, ok, output, error, error_type, node, started_at, finished_at, " \
                  "duration_ms, recorded_at"
LETTER_COLUMNS = "queue, message_id, actor, code, detail, raw, node, created_at"


class Rows:
    """COPY text buffers of the four tables, filled run by run."""

    def __init__(self) -> None:
        self.runs, self.steps, self.attempts, self.letters = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
        self.count = {"runs": 0, "run_steps": 0, "step_attempts": 0, "dead_letters": 0}

    @staticmethod
    def line(buffer: io.StringIO, *values: Any) -> None:
        buffer.write("\t".join(_field(v) for v in values) + "\n")


def _field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def generate(rows: Rows, runs: int, days: float, letters: int, now: datetime, rng: random.Random) -> None:
    span = timedelta(days=days)
    names = list(WORKFLOWS)
    for i in range(runs):
        created = now - span + span * (i / runs) + timedelta(milliseconds=rng.uniform(0, 50))
        _run(rows, names[i % len(names)], created, now, rng)
    for _ in range(letters):
        rows.line(rows.letters, "miniflow.ingress", uuid.uuid4().hex, "start_workflow",
                  rng.choices(CODES, weights=[5, 3, 3, 2, 1, 1])[0], "rejected", "\\\\x6869", "bench-node",
                  now - span * rng.random())
        rows.count["dead_letters"] += 1


def _run(rows: Rows, workflow: str, created: datetime, now: datetime, rng: random.Random) -> None:
    run_id = str(uuid.uuid4())
    roll = rng.random()
    fate = "running" if created > now - timedelta(minutes=2) else \
        "cancelled" if roll < 0.005 else "failed" if roll < 0.055 else "succeeded"
    stop_at = rng.randrange(5) if fate != "succeeded" else 5  # the step that fails, is cancelled or in flight
    t = created
    error = None
    for index, (step, mean_ms) in enumerate(WORKFLOWS[workflow]):
        if index > stop_at:
            rows.line(rows.steps, run_id, step, "skipped" if fate != "running" else "pending", 0, 1, None, None,
                      None, None, None)
            rows.count["run_steps"] += 1
            continue
        if index == stop_at and fate in ("cancelled", "running"):
            rows.line(rows.steps, run_id, step, "cancelled" if fate == "cancelled" else "queued", 1, 1, None, None,
                      t, None, None)
            rows.count["run_steps"] += 1
            continue
        attempts = 3 if index == stop_at else (2 if rng.random() < 0.03 else 1)
        queued = t
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                queued = t + timedelta(milliseconds=2)  # the retry is dispatched with a 1 s backoff
            wait_ms = rng.lognormvariate(2.7, 0.6) + (rng.uniform(2000, 5000) if rng.random() < 0.01 else 0)
            started = queued + timedelta(milliseconds=wait_ms + (1000 if attempt > 1 else 0))
            duration_ms = round(mean_ms * rng.lognormvariate(0, 0.4), 3)
            finished = started + timedelta(milliseconds=duration_ms)
            ok = attempt == attempts and index != stop_at
            error_type = None if ok else rng.choice(ERRORS)
            rows.line(rows.attempts, run_id, step, attempt, ok, '{"rows": 1}' if ok else None,
                      None if ok else "boom", error_type, "bench-node", started, finished, duration_ms,
                      finished + timedelta(milliseconds=1))
            rows.count["step_attempts"] += 1
            t = finished + timedelta(milliseconds=3)
            error = None if ok else f"step {step!r} failed: boom"
        rows.line(rows.steps, run_id, step, "succeeded" if error is None else "failed", attempts, 1, error,
                  "bench-node", queued, started, finished)
        rows.count["run_steps"] += 1
    rows.line(rows.runs, run_id, workflow, 1, fate, "{}", f"bench:{run_id}", 0,
              error if fate == "failed" else ("cancelled" if fate == "cancelled" else None),
              created, created, None if fate == "running" else t)
    rows.count["runs"] += 1


def populate(database: Database, runs: int, days: float, letters: int, now: datetime) -> dict[str, int]:
    rows = Rows()
    generate(rows, runs, days, letters, now, random.Random(14))
    raw = database.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for table, columns, buffer in (("runs", RUN_COLUMNS, rows.runs), ("run_steps", STEP_COLUMNS, rows.steps),
                                       ("step_attempts", ATTEMPT_COLUMNS, rows.attempts),
                                       ("dead_letters", LETTER_COLUMNS, rows.letters)):
            buffer.seek(0)
            cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buffer)
        raw.commit()
    finally:
        raw.close()
    analyse(database)
    return rows.count


def analyse(database: Database) -> None:
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def median_ms(repeat: int, call: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """The median wall time of ``call(*args, **kwargs)`` over ``repeat`` calls after one warm-up
    (the pooled connection, the statement cache, the pages in shared buffers)."""
    call(*args, **kwargs)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call(*args, **kwargs)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def windows(now: datetime) -> Iterator[tuple[str, datetime, str | None]]:
    yield "hour", now - timedelta(hours=1), None
    yield "day", now - timedelta(days=1), None
    yield "all", datetime(2000, 1, 1, tzinfo=UTC), None
    yield "day, workflow=etl", now - timedelta(days=1), "etl"


def time_windows(database: Database, now: datetime, repeat: int, label: str) -> None:
    for name, since, workflow in windows(now):
        summary = result_summary(database, since=since, workflow=workflow)
        ms = median_ms(repeat, result_summary, database, since=since, workflow=workflow)
        print(f"  {label:28} {name:20} {summary.runs:7d} runs  {ms:8.1f} ms")


def time_queries(database: Database, since: datetime, repeat: int) -> None:
    queries: dict[str, tuple[Callable[..., object], tuple[Any, ...]]] = {
        "run_status_counts": (monitor.run_status_counts, (None,)),
        "run_durations": (monitor.run_durations, (None, True)),
        "step_counts": (monitor.step_counts, (None,)),
        "attempt_durations": (monitor.attempt_durations, (None, True)),
        "queue_waits": (monitor.queue_waits, (None, True)),
        "error_counts": (monitor.error_counts, (None,)),
        "dead_letter_counts": (monitor.dead_letter_counts, ()),
    }
    with database.connect() as conn:
        for name, (query, rest) in queries.items():
            print(f"  {name:28} {median_ms(repeat, query, conn, since, *rest):8.1f} ms")


def check_python_path(database: Database, since: datetime, repeat: int) -> None:
    """The SQLite path (percentiles in Python) on the same rows: its time, and that it agrees."""
    with database.connect() as conn:
        in_sql = monitor.window_figures(conn, since, in_sql=True)
        in_python = monitor.window_figures(conn, since, in_sql=False)
        ms = median_ms(repeat, monitor.window_figures, conn, since, in_sql=False)
    for name in ("run_durations", "attempt_durations", "queue_waits"):
        a, b = getattr(in_sql, name), getattr(in_python, name)
        assert a.keys() == b.keys(), name
        for key in a:
            x, y = a[key], b[key]
            assert x.count == y.count and all(abs(getattr(x, p) - getattr(y, p)) <= 0.002
                                              for p in ("p50", "p95", "p99")), (name, key, x, y)
    assert (in_sql.runs_by_status, in_sql.steps, in_sql.errors) == \
        (in_python.runs_by_status, in_python.steps, in_python.errors)
    print(f"  percentiles in Python, day window: {ms:.1f} ms (figures agree with percentile_cont)")


def explain(database: Database, since: datetime) -> None:
    """Print the plan of every statement of the day window, as Postgres ran it."""
    statements: list[str] = []

    def capture(_conn: Any, cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append(cursor.mogrify(statement, parameters).decode())

    with database.connect() as conn:
        event.listen(database.engine, "before_cursor_execute", capture)
        try:
            monitor.window_figures(conn, since)
        finally:
            event.remove(database.engine, "before_cursor_execute", capture)
        for statement in statements:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement.replace("%", "%%")).scalars()
            print(f"-- {statement}\n" + "\n".join(plan))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--letters", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="print the plan of each query of the day window")
    args = parser.parse_args()
    with scratch_database() as url:
        database = Database(url)
        try:
            database.upgrade()
            now = utcnow()
            start = time.perf_counter()
            counts = populate(database, args.runs, args.days, args.letters, now)
            print(f"rows: {counts} written and analysed in {time.perf_counter() - start:.1f} s")
            print(f"result_summary, median of {args.repeat}:")
            time_windows(database, now, args.repeat, "migrated schema")
            print("each query of the day window:")
            time_queries(database, now - timedelta(days=1), args.repeat)
            check_python_path(database, now - timedelta(days=1), args.repeat)
            if args.explain:
                explain(database, now - timedelta(days=1))
            for name, (create, drop) in CANDIDATES.items():
                with database.transaction() as conn:
                    conn.exec_driver_sql(create)
                analyse(database)
                time_windows(database, now, args.repeat, f"+ {name}")
                with database.transaction() as conn:
                    conn.exec_driver_sql(drop)
        finally:
            database.dispose()


if __name__ == "__main__":
    main()
