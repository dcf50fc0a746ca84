"""Routing: executors of one queue with different step modules. A node without a step's task hands
the message back (without using an attempt) and the node that has the task runs it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import WorkerProcess, miniflow, poll, query

ECHO = "name: routed\nsteps:\n  - {name: only, task: test.echo}\n"
RUNS = 4


@pytest.fixture
def routed(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

    own = dict(env, MINIFLOW_NAMESPACE=f"{env['MINIFLOW_NAMESPACE']}_r{uuid.uuid4().hex[:4]}")
    assert miniflow(own, "db", "upgrade").returncode == 0
    definition = tmp_path / "routed.yaml"
    definition.write_text(ECHO)
    assert miniflow(own, "deploy", str(definition)).returncode == 0
    yield own
    delete_topology(own["MINIFLOW_BROKER_URL"], QueueNames(own["MINIFLOW_NAMESPACE"]))


def test_a_step_sent_to_a_node_without_its_task_completes_on_the_node_that_has_it_in_one_attempt(
        routed, tmp_path: Path) -> None:
    db = routed["MINIFLOW_DATABASE_URL"]
    core = WorkerProcess(routed, ["--role", "coordinator", "--role", "results", "--threads", "4"], tmp_path / "c.log")
    lacking = WorkerProcess(routed, ["--steps", "examples.steps", "--threads", "2"], tmp_path / "lacking.log")
    having: WorkerProcess | None = None
    try:
        core.wait_ready()
        lacking.wait_ready()
        keys = [f"routed-{uuid.uuid4()}" for _ in range(RUNS)]
        for key in keys:
            assert miniflow(routed, "start", "routed", "--key", key).returncode == 0
        # Only the node without the task is up: it hands the steps back, and the runs say why they wait.
        waiting = ("select count(*) from run_steps where note like %s and run_id in (select id from runs where "
                   f"idempotency_key in ({','.join(['%s'] * RUNS)}))")
        poll(lambda: query(db, waiting, "%is not registered on%", *keys)[0][0] == RUNS, timeout=60,
             what="every step to show it was handed back")
        shown = json.loads(miniflow(routed, "runs", "show", "--key", keys[0], "--json").stdout)
        assert "test.echo" in shown["steps"][0]["note"] and shown["steps"][0]["status"] == "queued"
        marks = ",".join(["%s"] * RUNS)
        ours = f"select id from runs where idempotency_key in ({marks})"
        assert query(db, f"select count(*) from step_attempts where run_id in ({ours})", *keys)[0][0] == 0  # none used
        having = WorkerProcess(routed, ["--steps", "tests.steps_for_tests", "--threads", "2"], tmp_path / "has.log")
        having.wait_ready()
        poll(lambda: query(db, f"select count(*) from runs where status = 'succeeded' and idempotency_key in "
                               f"({marks})", *keys)[0][0] == RUNS, timeout=120, what="every run to succeed")
        attempts = query(db, f"select attempt, node from step_attempts where run_id in ({ours})", *keys)
        assert sorted(a for a, _ in attempts) == [1] * RUNS  # one attempt each
        assert {node for _, node in attempts} == {f"{node_of(having)}"}
        assert "handed back" in "".join(lacking.lines)
    finally:
        for worker in (having, lacking, core):
            if worker is not None:
                worker.stop()


def node_of(worker: WorkerProcess) -> str:
    ready = next(line for line in worker.lines if "miniflow worker ready" in line)
    return ready.split("node=", 1)[1].split()[0]
