"""Outages on the private services: a worker logs one line when the broker or the database goes
away and one when it is back, not a line per retry; its runs finish once the service returns."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, WorkerProcess, miniflow, poll, query
from .private_services import Broker, Database

pytestmark = pytest.mark.usefixtures("shared_services_answer")
OUTAGE_S = 30
MAX_LINES = 6  # went away, back, and a little slack (a reminder needs 60 s, so none is expected)
ALL_ROLES = ["--role", "coordinator", "--role", "results", "--role", "executor", "--steps", "examples.steps",
             "--threads", "4"]


@pytest.fixture
def quiet_space(fault_env: dict[str, str]) -> Iterator[dict[str, str]]:
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

    own = dict(fault_env, MINIFLOW_NAMESPACE=f"{fault_env['MINIFLOW_NAMESPACE']}_o{uuid.uuid4().hex[:4]}",
               MINIFLOW_LOG_LEVEL="WARNING")  # the default level: what an operator sees
    assert miniflow(own, "db", "upgrade").returncode == 0
    assert miniflow(own, "deploy", str(ROOT / "examples" / "diamond.yaml")).returncode == 0
    yield own
    delete_topology(own["MINIFLOW_BROKER_URL"], QueueNames(own["MINIFLOW_NAMESPACE"]))


def lines_since(worker: WorkerProcess, mark: int) -> list[str]:
    return [line.rstrip() for line in worker.lines[mark:] if line.strip()]


def start_and_finish(space: dict[str, str]) -> None:
    key = f"outage-{uuid.uuid4()}"
    started = miniflow(space, "start", "diamond", "-p", "x=3", "--key", key, "--wait", "--timeout", "120")
    assert started.returncode == 0, started.stderr + started.stdout


def test_a_broker_outage_of_30_s_logs_a_bounded_number_of_lines(quiet_space, private_services, tmp_path: Path):
    broker: Broker = private_services[0]
    worker = WorkerProcess(quiet_space, ALL_ROLES, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        start_and_finish(quiet_space)
        mark = len(worker.lines)
        broker.stop_app()
        try:
            poll(lambda: any("is unreachable" in line for line in lines_since(worker, mark)), timeout=30,
                 what="the worker to notice the broker is gone")
            time.sleep(OUTAGE_S)  # the outage itself: its length is what the test is about
        finally:
            broker.start_app()
        poll(lambda: any("is back" in line for line in lines_since(worker, mark)), timeout=60,
             what="the worker to notice the broker is back")
        start_and_finish(quiet_space)  # and it serves again
        told = lines_since(worker, mark)
        assert len(told) <= MAX_LINES, "\n".join(told)
        assert not any("Traceback" in line for line in told), "\n".join(told)
        assert sum("is unreachable" in line for line in told) == 1
        assert "guest:***@" in next(line for line in told if "is unreachable" in line)
    finally:
        worker.stop()


def test_a_database_outage_logs_a_bounded_number_of_lines(quiet_space, private_services, tmp_path: Path):
    database: Database = private_services[1]
    worker = WorkerProcess(quiet_space, ALL_ROLES, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        start_and_finish(quiet_space)
        mark = len(worker.lines)
        database.stop()
        try:
            poll(lambda: any("database" in line and "is unreachable" in line for line in lines_since(worker, mark)),
                 timeout=30, what="the worker to notice the database is gone")
            time.sleep(15)
        finally:
            database.start()
        poll(lambda: any("is back" in line for line in lines_since(worker, mark)), timeout=60,
             what="the worker to notice the database is back")
        start_and_finish(quiet_space)
        told = lines_since(worker, mark)
        assert len(told) <= MAX_LINES, "\n".join(told)
        assert not any("Traceback" in line for line in told), "\n".join(told)
        assert query(quiet_space["MINIFLOW_DATABASE_URL"], "select count(*) from runs where status <> 'succeeded'") \
            == [(0,)]
    finally:
        worker.stop()


def test_a_client_whose_connection_a_broker_restart_cut_publishes_its_next_start_on_a_new_one(
        quiet_space, private_services, tmp_path: Path):
    from miniflow.ops.client import Client

    broker: Broker = private_services[0]
    worker = WorkerProcess(quiet_space, ALL_ROLES, tmp_path / "worker.log")
    client = Client.from_env(quiet_space)
    try:
        worker.wait_ready()
        first = client.start("diamond", {"x": 1})
        broker.stop_app()
        broker.start_app()
        second = client.start("diamond", {"x": 2})  # on the connection the restart cut: no error, a new one
        for handle in (first, second):
            assert handle.wait(timeout=120).status == "succeeded"
    finally:
        client.close()
        worker.stop()
