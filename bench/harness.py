"""Shared pieces of the benchmarks: a private namespace and database, worker processes, facts
about the machine. Everything runs against the local RabbitMQ and Postgres."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2

from miniflow.ops.processes import TimerProcess, WorkerProcess
from miniflow.persistence.sealing import new_key_line

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BROKER_URL = os.environ.get("MINIFLOW_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
ADMIN_DSN = os.environ.get("MINIFLOW_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def machine() -> dict[str, Any]:
    import dramatiq
    import pika
    import sqlalchemy

    def cmd(*args: str) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"

    with psycopg2.connect(ADMIN_DSN) as conn, conn.cursor() as cur:
        cur.execute("show server_version")
        pg = cur.fetchone()[0]
    return {
        "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "dramatiq": dramatiq.__version__, "pika": pika.__version__, "sqlalchemy": sqlalchemy.__version__,
        "rabbitmq": cmd("rabbitmqctl", "version"), "postgres": pg,
    }


@contextmanager
def scratch_database() -> Iterator[str]:
    name = f"miniflow_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(ADMIN_DSN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def delete_queues(namespace: str) -> None:
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

    delete_topology(BROKER_URL, QueueNames(namespace))


def bench_env(namespace: str, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIFLOW_", "OTEL_"))}
    env.update(MINIFLOW_BROKER_URL=BROKER_URL, MINIFLOW_DATABASE_URL=database_url, MINIFLOW_NAMESPACE=namespace,
               MINIFLOW_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1", MINIFLOW_DATA_KEY=new_key_line("bench"), **extra)
    return env


def provision(env: dict[str, str]) -> dict[str, str]:
    """Migrate the database and set up message authentication as a deployment does: a core key, and
    an executor key that executor-only workers of this env sign with (BENCH_EXECUTOR_KEY)."""
    miniflow(env, "db", "upgrade")
    public = json.loads(miniflow(env, "keys", "core", "init", "--json"))["core_public_keys"]
    token = json.loads(miniflow(env, "keys", "create", "--name", "bench-executor", "--role", "executor",
                                "--json"))["token"]
    return dict(env, MINIFLOW_CORE_PUBLIC_KEYS=public, BENCH_EXECUTOR_KEY=token)


def miniflow(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([str(BIN / "miniflow"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"miniflow {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


class Worker(WorkerProcess):
    """A `miniflow worker` process for a benchmark, its log in the temporary folder."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        if "--role" not in args and "BENCH_EXECUTOR_KEY" in env:  # an executor alone signs with its own key
            env = dict(env, MINIFLOW_KEY=env["BENCH_EXECUTOR_KEY"])
        super().__init__(env, list(args), Path(tempfile.mkstemp(prefix="miniflow-bench-", suffix=".log")[1]), cwd=ROOT)

    def wait_ready(self, timeout: float = 60) -> Worker:  # type: ignore[override]
        super().wait_ready(timeout)
        return self


class Timer(TimerProcess):
    """A `miniflow timer` process for a benchmark, its log in the temporary folder."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env, Path(tempfile.mkstemp(prefix="miniflow-bench-timer-", suffix=".log")[1]), cwd=ROOT)

    def wait_ready(self, timeout: float = 60) -> Timer:  # type: ignore[override]
        super().wait_ready(timeout)
        return self


def wait_terminal(database_url: str, expected: int, timeout: float = 300) -> float:
    """Poll until `expected` runs are terminal; returns the monotonic time it happened."""
    dsn = database_url.replace("postgresql+psycopg2", "postgresql")
    deadline = time.monotonic() + timeout
    with psycopg2.connect(dsn) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            while True:
                cur.execute("select count(*) from runs where status in ('succeeded','failed','cancelled')")
                done = cur.fetchone()[0]
                if done >= expected:
                    return time.monotonic()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {done}/{expected} runs finished in {timeout}s")
                time.sleep(0.02)
