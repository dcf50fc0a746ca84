"""TLS to RabbitMQ and Postgres, against private TLS-enabled instances and a CA made here: a
verified connection works end to end, a certificate from another CA or for another name is refused
with one line and exit 3."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from . import private_services as priv
from .conftest import DATA_KEY, WorkerProcess, _base_env, _unavailable, miniflow, provision
from .tls import CertAuthority


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("tls")
    authority = CertAuthority("MiniFlow test CA")
    files = authority.server(folder / "server")
    other = CertAuthority("Another CA").write_ca(folder / "other-ca.pem")
    broker = database = None
    try:
        try:
            broker = priv.PrivateRabbitMQ(tls=files)
            database = priv.PrivatePostgres(tls=files)
        except Exception as exc:  # noqa: BLE001 - whatever stops them from starting, say it and skip/fail
            _unavailable("a private TLS RabbitMQ and Postgres", exc)
        assert broker is not None and database is not None and broker.tls_port is not None
        name = f"miniflow_tls_{uuid.uuid4().hex[:6]}"
        admin = psycopg2.connect(host="127.0.0.1", port=database.port, user="postgres", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        yield {"ca": files.ca, "other": other, "broker": broker, "amqps_port": broker.tls_port,
               "pg_port": database.port, "database": name}
    finally:
        for service in (database, broker):
            if service is not None:
                service.close()


def tls_env(tls: dict[str, Any], *, ca: Path, host: str = "localhost") -> dict[str, str]:
    environ = _base_env()
    environ.update(
        MINIFLOW_BROKER_URL=f"amqps://guest:guest@{host}:{tls['amqps_port']}/%2F",
        MINIFLOW_DATABASE_URL=(f"postgresql://postgres@{host}:{tls['pg_port']}/{tls['database']}"
                               f"?sslmode=verify-full&sslrootcert={ca}"),
        SSL_CERT_FILE=str(ca), MINIFLOW_NAMESPACE=f"mftls_{uuid.uuid4().hex[:6]}", MINIFLOW_DATA_KEY=DATA_KEY,
        PYTHONUNBUFFERED="1")
    return environ


def test_a_worker_runs_over_verified_tls_to_both(tls, tmp_path: Path) -> None:
    env = provision(tls_env(tls, ca=tls["ca"]))  # migrations and keys over verify-full
    worker = WorkerProcess(env, ["--role", "coordinator", "--role", "results", "--threads", "2"], tmp_path / "w.log")
    try:
        worker.wait_ready()
        connections = [c for c in tls["broker"].ctl("list_connections", "ssl").stdout.split() if c != "ssl"]
        assert connections and all(c == "true" for c in connections), connections
    finally:
        worker.stop()
    conn = psycopg2.connect(host="localhost", port=tls["pg_port"], user="postgres", dbname=tls["database"],
                            sslmode="verify-full", sslrootcert=str(tls["ca"]))
    with conn, conn.cursor() as cur:
        cur.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        assert cur.fetchone() == (True,)
    conn.close()


@pytest.mark.parametrize("case", ["another CA", "another name"])
def test_a_certificate_that_does_not_verify_is_refused_with_one_line(tls, case: str) -> None:
    env = tls_env(tls, ca=tls["other"]) if case == "another CA" else tls_env(tls, ca=tls["ca"], host="127.0.0.2")
    upgrade = miniflow(env, "db", "upgrade")
    assert upgrade.returncode == 3, upgrade.stderr
    worker = miniflow(dict(env, MINIFLOW_AUTH="off"), "worker", "--steps", "examples.steps", timeout=60)
    assert worker.returncode == 3, worker.stderr
    for done in (upgrade, worker):
        lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "certificate" in lines[0], done.stderr
        assert "Traceback" not in done.stderr
