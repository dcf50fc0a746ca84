"""Integration fixtures: the real RabbitMQ and Postgres of this machine.

Services are found through MINIFLOW_TEST_BROKER_URL and MINIFLOW_TEST_DATABASE_URL (defaulting to
the local ones). Each test session gets its own namespace (queue prefix) and its own database,
removed at the end. Without the services the tests skip on a laptop and FAIL when CI=true.
Nothing connects at import or collection time.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pika
import psycopg2
import pytest
from sqlalchemy.engine import make_url

from .processes import BIN, ROOT, WorkerProcess

__all__ = ["BIN", "ROOT", "WorkerProcess"]
BROKER_URL = os.environ.get("MINIFLOW_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
ADMIN_DB_URL = os.environ.get("MINIFLOW_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI=true, so integration tests must run, not skip", pytrace=False)
    pytest.skip(message)


def _pg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def services() -> None:
    try:
        pika.BlockingConnection(pika.URLParameters(BROKER_URL)).close()
    except Exception as exc:
        _unavailable(f"RabbitMQ at {make_url(BROKER_URL.replace('amqp', 'postgresql', 1)).host}", exc)
    try:
        psycopg2.connect(_pg_dsn(ADMIN_DB_URL), connect_timeout=5).close()
    except Exception as exc:
        _unavailable("Postgres", exc)


@pytest.fixture(scope="session")
def namespace(services: None) -> Iterator[str]:
    from actors.broker import delete_topology
    from protocol.names import QueueNames

    ns = f"mft_{uuid.uuid4().hex[:8]}"
    yield ns
    delete_topology(BROKER_URL, QueueNames(ns))


@pytest.fixture(scope="session")
def database_url(services: None) -> Iterator[str]:
    name = f"miniflow_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(_pg_dsn(ADMIN_DB_URL))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN_DB_URL).set(drivername="postgresql+psycopg2", database=name)
    admin.close()
    yield url.render_as_string(hide_password=False)
    admin = psycopg2.connect(_pg_dsn(ADMIN_DB_URL))  # a fresh one: a fault test may restart Postgres
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def env(namespace: str, database_url: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}
    environ.update(MINIFLOW_BROKER_URL=BROKER_URL, MINIFLOW_DATABASE_URL=database_url,
                   MINIFLOW_NAMESPACE=namespace, MINIFLOW_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    return environ


def miniflow(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `miniflow` command line as a user would."""
    return subprocess.run([str(BIN / "miniflow"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def cluster(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Schema migrated, examples deployed, and separate worker processes: one coordinator+results,
    two executors."""
    logs = tmp_path_factory.mktemp("worker-logs")
    result = miniflow(env, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    for example in ("examples/diamond.yaml", "examples/csv_report.yaml"):
        result = miniflow(env, "deploy", example)
        assert result.returncode == 0, result.stderr
    workers = [
        WorkerProcess(env, ["--role", "coordinator", "--role", "results", "--threads", "4"], logs / "coord.log"),
        WorkerProcess(env, ["--steps", "examples.steps", "--threads", "4"], logs / "exec1.log"),
        WorkerProcess(env, ["--steps", "examples.steps", "--threads", "4"], logs / "exec2.log"),
    ]
    try:
        for w in workers:
            w.wait_ready()
        yield env
    finally:
        for w in workers:
            w.stop()


def poll(fn, *, timeout: float = 60, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Call fn until it returns something truthy; fail with `what` past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
