"""Fire lateness of the cron timer: run created_at minus the tick's due time, over a per-second schedule.

Runs against the local RabbitMQ and Postgres (as the other benchmarks: bench/harness.py) in its own
namespace and database, removed afterwards. Starts one coordinator+results worker, one executor
and one `miniflow timer` as separate processes, adds a `* * * * * *` schedule on the diamond
workflow, waits for ``--ticks`` ticks, and prints the median and p99 lateness; writes
bench/results-cron.json.

    .venv/bin/python -m bench.cron_lateness [--ticks 70]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2

from bench.harness import ROOT, Timer, Worker, bench_env, delete_queues, miniflow, provision, scratch_database


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def ticks_of(database_url: str, ticks: int) -> list[tuple[datetime, datetime, float, str]]:
    """Run the per-second schedule until ``ticks`` + 2 ticks have started runs: (due, run created,
    timer-side lateness, outcome) of each, oldest first."""
    deadline = time.monotonic() + ticks + 60
    rows: list[tuple[datetime, datetime, float, str]] = []
    conn = psycopg2.connect(database_url.replace("postgresql+psycopg2", "postgresql"))
    conn.autocommit = True
    try:
        while time.monotonic() < deadline and len(rows) < ticks + 2:
            time.sleep(1)
            with conn.cursor() as cur:
                cur.execute("select t.due_at, r.created_at, t.lateness_ms, t.outcome from schedule_ticks t "
                            "join runs r on r.idempotency_key = t.idempotency_key order by t.due_at")
                rows = cur.fetchall()
    finally:
        conn.close()
    return rows


def measure(ticks: int) -> list[tuple[datetime, datetime, float, str]]:
    namespace = f"mfbench_{uuid.uuid4().hex[:8]}"
    with scratch_database() as database_url:
        env = bench_env(namespace, database_url)
        running: list[Worker | Timer] = []
        try:
            env = provision(env)
            miniflow(env, "deploy", "examples/diamond.yaml")
            running.append(Worker(env, "--role", "coordinator", "--role", "results", "--threads", "4").wait_ready())
            running.append(Worker(env, "--steps", "examples.steps", "--threads", "4").wait_ready())
            running.append(Timer(env).wait_ready())
            miniflow(env, "schedules", "add", "bench", "--workflow", "diamond", "--cron", "* * * * * *",
                     "--grace", "5")
            rows = ticks_of(database_url, ticks)
            miniflow(env, "schedules", "pause", "bench")
            return rows
        finally:
            for process in running:
                process.stop()
            delete_queues(namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ticks", type=int, default=70)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results-cron.json"))
    args = parser.parse_args()
    rows = measure(args.ticks)
    measured = rows[1:args.ticks + 1]  # the first tick may be fired while the timer warms up
    if len(measured) < args.ticks:
        print(f"only {len(measured)} ticks were measured", file=sys.stderr)
        return 1
    lateness = [(created - due).total_seconds() * 1000 for due, created, _, _ in measured]
    timer_side = [float(r[2]) for r in measured]
    result: dict[str, Any] = {
        "benchmark": "cron fire lateness (run created_at - due time), per-second schedule",
        "ticks": len(lateness),
        "outcomes": sorted({str(r[3]) for r in measured}),
        "run_created_ms": {"median": round(statistics.median(lateness), 2), "p99": round(percentile(lateness, 0.99), 2),
                           "max": round(max(lateness), 2), "min": round(min(lateness), 2)},
        "timer_recorded_ms": {"median": round(statistics.median(timer_side), 2),
                              "p99": round(percentile(timer_side, 0.99), 2)},
        "aim_p99_ms": 50,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"cron lateness over {result['ticks']} ticks: median {result['run_created_ms']['median']} ms, "
          f"p99 {result['run_created_ms']['p99']} ms (timer side: median "
          f"{result['timer_recorded_ms']['median']} ms, p99 {result['timer_recorded_ms']['p99']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
