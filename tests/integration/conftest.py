"""Integration fixtures: the real RabbitMQ and Postgres of this machine, and private ones for faults.

Services are found through MINIFLOW_TEST_BROKER_URL and MINIFLOW_TEST_DATABASE_URL (defaulting to
the local ones). Each test session gets its own namespace (queue prefix) and its own database,
removed at the end. Without the services the tests skip on a laptop and FAIL when CI=true.
Nothing connects at import or collection time.

Tests that stop, restart or cut off a service use ``fault_env``: a private RabbitMQ node and a
private Postgres cluster (``private_services``), started once per session and always torn down.
They also use ``shared_services_answer``, which probes the machine's own services throughout the
test and fails it if they ever stopped answering.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
import psycopg2
import pytest
from sqlalchemy.engine import make_url

from miniflow.ops import processes
from miniflow.ops.polling import poll_until
from miniflow.persistence.sealing import new_key_line

from . import private_services as priv

__all__ = ["BIN", "ROOT", "TimerProcess", "WorkerProcess", "miniflow", "own_namespace", "poll", "query", "running"]
ROOT = Path(__file__).resolve().parents[2]
BIN = processes.BIN
DATA_KEY = new_key_line("test")  # the session's data key: workers seal secret params with it
BROKER_URL = os.environ.get("MINIFLOW_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
ADMIN_DB_URL = os.environ.get("MINIFLOW_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def _interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")  # so that fixtures tear private services down on a CI timeout


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _interrupted)


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
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the service is not there
        _unavailable(f"RabbitMQ at {make_url(BROKER_URL.replace('amqp', 'postgresql', 1)).host}", exc)
    try:
        psycopg2.connect(_pg_dsn(ADMIN_DB_URL), connect_timeout=5).close()
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the service is not there
        _unavailable("Postgres", exc)


@pytest.fixture(scope="session")
def namespace(services: None) -> Iterator[str]:
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

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
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's artifact store: one folder every worker of the tests shares, as the processes of
    a deployment on one machine would (on several, a shared directory or an s3:// URL)."""
    return str(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="session")
def env(namespace: str, database_url: str, artifacts_dir: str) -> dict[str, str]:
    environ = _base_env()
    environ.update(MINIFLOW_BROKER_URL=BROKER_URL, MINIFLOW_DATABASE_URL=database_url,
                   MINIFLOW_NAMESPACE=namespace, MINIFLOW_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
                   MINIFLOW_DATA_KEY=DATA_KEY, MINIFLOW_ARTIFACTS=artifacts_dir)
    return provision(environ)


EXECUTOR_KEYS: dict[str, str] = {}  # the operator token of an env -> the token of its executor key


def provision(environ: dict[str, str]) -> dict[str, str]:
    """Migrate the database and set up message authentication as an operator would: a core signing
    key, a key for executors and one for the operator running the CLI (MINIFLOW_KEY of the env)."""
    for args in (("db", "upgrade"), ("keys", "core", "init", "--json")):
        result = miniflow(environ, *args)
        assert result.returncode == 0, result.stderr
    public = json.loads(result.stdout)["core_public_keys"]
    tokens = {}
    for role in ("executor", "operator"):
        made = miniflow(environ, "keys", "create", "--name", f"tests-{role}-{uuid.uuid4().hex[:6]}", "--role", role,
                        "--json")
        assert made.returncode == 0, made.stderr
        tokens[role] = json.loads(made.stdout)["token"]
    EXECUTOR_KEYS[tokens["operator"]] = tokens["executor"]
    return dict(environ, MINIFLOW_KEY=tokens["operator"], MINIFLOW_CORE_PUBLIC_KEYS=public)


@contextmanager
def own_namespace(env: dict[str, str], tag: str) -> Iterator[dict[str, str]]:
    """``env`` on a queue namespace of its own (same database), its queues deleted afterwards. A module
    that runs its own workers uses one, so that the session's ``cluster``, whose executors lack the
    tests' step tasks, never takes (and hands back, with a growing delay) one of its steps."""
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

    own = dict(env, MINIFLOW_NAMESPACE=f"{env['MINIFLOW_NAMESPACE']}_{tag}{uuid.uuid4().hex[:4]}")
    try:
        yield own
    finally:
        delete_topology(own["MINIFLOW_BROKER_URL"], QueueNames(own["MINIFLOW_NAMESPACE"]))


def executor_token(env: dict[str, str]) -> str | None:
    """The executor key provisioned with this env (envs derived from it carry its operator key)."""
    return EXECUTOR_KEYS.get(env.get("MINIFLOW_KEY", ""))


def executor_only(args: list[str]) -> bool:
    roles = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--role"]
    return set(roles) == {"executor"} or (not roles and "--steps" in args)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}


@pytest.fixture(scope="session")
def private_services() -> Iterator[tuple[priv.Broker, priv.Database]]:
    """A RabbitMQ and a Postgres of the test session's own (containers, or private instances)."""
    broker: priv.Broker | None = None
    database: priv.Database | None = None
    try:
        try:
            broker = priv.start_broker()
            database = priv.start_database()
        except Exception as exc:  # noqa: BLE001 - whatever stops them from starting, say it and skip/fail
            _unavailable("a private RabbitMQ and Postgres for the fault tests", exc)
        assert broker is not None and database is not None
        yield broker, database
    finally:
        for service in (database, broker):
            if service is not None:
                service.close()


@pytest.fixture(scope="session")
def fault_env(private_services: tuple[priv.Broker, priv.Database], artifacts_dir: str) -> dict[str, str]:
    """Settings for workers on the private services (their own namespace and database)."""
    broker, database = private_services
    url = priv.create_database(database, f"miniflow_fault_{uuid.uuid4().hex[:8]}")
    environ = _base_env()
    environ.update(MINIFLOW_BROKER_URL=broker.url, MINIFLOW_DATABASE_URL=url,
                   MINIFLOW_NAMESPACE=f"mff_{uuid.uuid4().hex[:8]}", MINIFLOW_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
                   MINIFLOW_DATA_KEY=DATA_KEY, MINIFLOW_ARTIFACTS=artifacts_dir)
    return provision(environ)


class SharedServicesWatch:
    """Probes the machine's own RabbitMQ (a passive declare on one connection) and Postgres (a
    ``select 1``) every half second, in a thread, and keeps every failure."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.probes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="shared-services-watch")
        self._thread.start()

    def _run(self) -> None:
        broker: Any = None
        db: Any = None
        while not self._stop.is_set():
            try:
                broker = broker if broker is not None and broker.is_open else \
                    pika.BlockingConnection(pika.URLParameters(BROKER_URL))
                broker.channel().exchange_declare("amq.direct", passive=True)
            except Exception as exc:  # noqa: BLE001 - any failure is what we look for
                self.failures.append(f"RabbitMQ: {type(exc).__name__}: {exc}")
                broker = None
            try:
                db = db if db is not None and not db.closed else psycopg2.connect(_pg_dsn(ADMIN_DB_URL),
                                                                                  connect_timeout=5)
                with db.cursor() as cur:
                    cur.execute("select 1")
                db.rollback()
            except Exception as exc:  # noqa: BLE001 - any failure is what we look for
                self.failures.append(f"Postgres: {type(exc).__name__}: {exc}")
                db = None
            self.probes += 1
            self._stop.wait(0.5)
        for connection in (broker, db):
            if connection is not None:
                connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def shared_services_answer(services: None) -> Iterator[SharedServicesWatch]:
    """Fails the test if the machine's own RabbitMQ or Postgres stopped answering at any time in it."""
    watch = SharedServicesWatch()
    yield watch
    watch.stop()
    assert watch.probes >= 1, "the watch never probed the shared services"
    assert not watch.failures, f"the machine's own services stopped answering: {watch.failures[:5]}"


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
    with running(env, logs, "examples.steps"):
        yield env


@contextmanager
def running(env: dict[str, str], logs: Path, steps: str, *, executors: int = 2, threads: int = 4,
            executor_args: tuple[str, ...] = ()) -> Iterator[None]:
    """A coordinator+results worker and ``executors`` executors of ``steps``, ready, as their own
    processes (logs under ``logs``); all stopped afterwards."""
    workers = [WorkerProcess(env, ["--role", "coordinator", "--role", "results", "--threads", "4"],
                             logs / "coord.log")]
    workers += [WorkerProcess(env, ["--steps", steps, "--threads", str(threads), *executor_args],
                              logs / f"exec{i + 1}.log") for i in range(executors)]
    try:
        for w in workers:
            w.wait_ready()
        yield
    finally:
        for w in workers:
            w.stop()


def poll(fn: Callable[[], Any], *, timeout: float = 60, interval: float = 0.1, what: str = "condition") -> Any:
    """Call fn until it returns something truthy (and return that); WaitTimedOut naming `what` past the
    deadline."""
    return poll_until(lambda: fn() or None, timeout=timeout, interval=interval, what=what)


def query(database_url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Run one SQL statement on a test database and return its rows (a connection of its own)."""
    conn = psycopg2.connect(_pg_dsn(database_url))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows
    finally:
        conn.close()


class WorkerProcess(processes.WorkerProcess):
    """`miniflow worker` run from the repository root (so `--steps examples.steps` imports). An
    executor-only worker signs with the executor key of its database, as a deployment's would."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path, prefix: list[str] | None = None,
                 **kwargs: Any) -> None:
        token = executor_token(env)
        if token is not None and executor_only(args):
            env = dict(env, MINIFLOW_KEY=token)
        super().__init__(env, args, log, prefix, cwd=ROOT, **kwargs)


class TimerProcess(processes.TimerProcess):
    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(env, log, cwd=ROOT)
