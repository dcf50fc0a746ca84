"""Fire lateness of the cron timer: run created_at minus the tick's due time, over a per-second schedule.

Runs against the local RabbitMQ and Postgres (MINIFLOW_TEST_BROKER_URL / MINIFLOW_TEST_DATABASE_URL,
defaulting to the local ones) in its own namespace and database, removed afterwards. Starts one
coordinator+results worker, one executor and one `miniflow timer` as separate processes, adds a
`* * * * * *` schedule on the diamond workflow, waits for ``--ticks`` ticks, and prints the median
and p99 lateness; writes bench/results-cron.json.

    .venv/bin/python bench/cron_lateness.py [--ticks 70]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BROKER_URL = os.environ.get("MINIFLOW_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
ADMIN_DB_URL = os.environ.get("MINIFLOW_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=70)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results-cron.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from actors.broker import delete_topology
    from protocol.names import QueueNames

    namespace = f"mfbench_{uuid.uuid4().hex[:8]}"
    dbname = f"miniflow_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(dsn(ADMIN_DB_URL))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{dbname}"')
    db_url = make_url(ADMIN_DB_URL).set(drivername="postgresql+psycopg2", database=dbname)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}
    env.update(MINIFLOW_BROKER_URL=BROKER_URL, MINIFLOW_DATABASE_URL=db_url.render_as_string(hide_password=False),
               MINIFLOW_NAMESPACE=namespace, PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen[bytes]] = []

    def cli(*argv: str) -> None:
        subprocess.run([str(BIN / "miniflow"), *argv], cwd=ROOT, env=env, check=True, capture_output=True)

    def spawn(*argv: str, ready: str) -> None:
        proc = subprocess.Popen([str(BIN / "miniflow"), *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        procs.append(proc)
        assert proc.stderr is not None
        for line in proc.stderr:
            if ready.encode() in line:
                break
        else:
            raise RuntimeError(f"{argv[0]} exited before it was ready")

    try:
        cli("db", "upgrade")
        cli("deploy", "examples/diamond.yaml")
        spawn("worker", "--role", "coordinator", "--role", "results", "--threads", "4",
              ready="miniflow worker ready")
        spawn("worker", "--steps", "examples.steps", "--threads", "4", ready="miniflow worker ready")
        spawn("timer", ready="miniflow timer ready")
        cli("schedules", "add", "bench", "--workflow", "diamond", "--cron", "* * * * * *", "--grace", "5")
        conn = psycopg2.connect(dsn(ADMIN_DB_URL, dbname))
        conn.autocommit = True
        deadline = time.monotonic() + args.ticks + 60
        rows: list[tuple[object, ...]] = []
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                cur.execute("select t.due_at, r.created_at, t.lateness_ms, t.outcome from schedule_ticks t "
                            "join runs r on r.idempotency_key = t.idempotency_key order by t.due_at")
                rows = cur.fetchall()
            if len(rows) >= args.ticks + 2:
                break
            time.sleep(1)
        cli("schedules", "pause", "bench")
        conn.close()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
        delete_topology(BROKER_URL, QueueNames(namespace))
    measured = rows[1:args.ticks + 1]  # the first tick may be fired while the timer warms up
    if len(measured) < args.ticks:
        print(f"only {len(measured)} ticks were measured", file=sys.stderr)
        return 1
    lateness = [(created - due).total_seconds() * 1000 for due, created, _, _ in measured]  # type: ignore[operator]
    timer_side = [float(r[2]) for r in measured]  # type: ignore[arg-type]
    result = {
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
