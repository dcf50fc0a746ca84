"""An executor "node" in its own network namespace is cut off from RabbitMQ in the middle of its
steps: the broker notices (heartbeats), the steps are redelivered and finish on another node, and
when the link is back the cut-off node's late results arrive and are fenced (recorded nowhere,
logged). Figures go to reports/faults.json as the `executor.partitioned` row of docs/reliability.md.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import netns
from .conftest import WorkerProcess, miniflow, poll, query
from .fault_matrix import Outcome, queue_depth, record

PARTITION = """
name: partition
steps:
  - {name: far, task: test.hold, queue: edge}
  - {name: after, task: test.echo, needs: [far]}
"""
RUNS = 6
HELD_THREADS = 2  # the cut-off node runs this many steps at once when the link goes down
HEARTBEAT_S = 2  # the cut-off node's AMQP heartbeat: the broker drops it after ~2 missed beats
# The far node also tries each connection once (connection_attempts=1), so that while cut off its
# result sends fail within seconds and it is seen keeping them, rather than after a minute.


pytestmark = pytest.mark.usefixtures("shared_services_answer")


@pytest.fixture
def node(fault_env: dict[str, str]) -> Iterator[netns.Node]:
    reason = netns.available()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"cannot make a network namespace: {reason}; CI=true, so this test must run")
        pytest.skip(reason)
    made = netns.Node(fault_env["MINIFLOW_BROKER_URL"])  # the session's private broker
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture
def space(fault_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

    ns = f"{fault_env['MINIFLOW_NAMESPACE']}_p{uuid.uuid4().hex[:4]}"
    own = dict(fault_env, MINIFLOW_NAMESPACE=ns)
    assert miniflow(own, "db", "upgrade").returncode == 0
    definition = tmp_path / "partition.yaml"
    definition.write_text(PARTITION)
    deployed = miniflow(own, "deploy", str(definition))
    assert deployed.returncode == 0, deployed.stderr
    yield own
    delete_topology(own["MINIFLOW_BROKER_URL"], QueueNames(ns))


def fenced_runs(log: str) -> set[str]:
    """Runs whose `far` attempt 1 result arrived again and was ignored, from the results log."""
    found = set()
    for line in log.splitlines():
        if "duplicate result ignored: run " in line and " step far attempt 1 " in line:
            found.add(line.split("duplicate result ignored: run ", 1)[1].split()[0])
    return found


def undelivered_runs(lines: list[str]) -> set[str]:
    """Runs whose result the cut-off node failed to hand in (and kept), from its log."""
    marker = "result of run "
    return {line.split(marker, 1)[1].split()[0] for line in lines
            if marker in line and "not delivered (broker out of reach" in line}


def test_a_node_cut_off_mid_step_is_replaced_and_its_late_results_are_fenced(space, node, tmp_path):
    db = space["MINIFLOW_DATABASE_URL"]
    hold = tmp_path / "hold"
    hold.mkdir()
    coordinator = WorkerProcess(space, ["--role", "coordinator", "--role", "results"], tmp_path / "coord.log")
    far_env = dict(space, MINIFLOW_BROKER_URL=node.broker_url(heartbeat=str(HEARTBEAT_S), connection_attempts="1"),
                   MINIFLOW_TEST_HOLD_DIR=str(hold))
    far_env.pop("MINIFLOW_DATABASE_URL")  # an executor needs only the broker
    far = WorkerProcess(far_env, ["--steps", "tests.steps_for_tests", "--queue", "edge",
                                  "--threads", str(HELD_THREADS)], tmp_path / "far.log", prefix=node.prefix)
    near: WorkerProcess | None = None
    letters_before = query(db, "select count(*) from dead_letters")[0][0]
    cut_at = healed_at = 0.0
    try:
        coordinator.wait_ready()
        far.wait_ready()
        keys = [f"partition-{uuid.uuid4()}" for _ in range(RUNS)]
        for key in keys:
            started = miniflow(space, "start", "partition", "--key", key)
            assert started.returncode == 0, started.stderr
        poll(lambda: len(list(hold.glob("started.*"))) >= HELD_THREADS, timeout=60,
             what="the far node to be in the middle of its steps")
        held = {p.name.split(".")[1] for p in hold.glob("started.*")}

        node.cut()
        cut_at = time.monotonic()
        near = WorkerProcess(space, ["--steps", "tests.steps_for_tests", "--queue", "edge"], tmp_path / "near.log")
        near.wait_ready()
        marks = ",".join(["%s"] * len(keys))

        def all_ended() -> list[tuple[str, str]] | None:
            rows = query(db, f"select id, status from runs where idempotency_key in ({marks})", *keys)
            return rows if len(rows) == RUNS and all(s in ("succeeded", "failed", "cancelled") for _, s in rows) \
                else None

        runs = poll(all_ended, timeout=120, interval=0.2, what="every run to end while the far node is cut off")
        ended_at = time.monotonic()
        assert {s for _, s in runs} == {"succeeded"}
        run_ids = [r for r, _ in runs]
        near_node = f"{socket.gethostname()}:{near.proc.pid}"
        attempts = query(db, f"select run_id, attempt, node from step_attempts where step = 'far' and run_id in "
                             f"({marks})", *run_ids)
        # each step recorded once, from the node that was still reachable
        assert sorted(r for r, _, _ in attempts) == sorted(run_ids)
        assert {(a, n) for _, a, n in attempts} == {(1, near_node)}

        # The far node finishes its held steps while still cut off: it keeps their results ...
        (hold / "release").touch()
        poll(lambda: held <= undelivered_runs(far.lines), timeout=120,
             what="the far node to try to hand in each held step's result while cut off")
        # ... and hands them in once the link is back, where they are fenced.
        node.heal()
        healed_at = time.monotonic()
        poll(lambda: fenced_runs(coordinator.log_path.read_text()) >= held, timeout=180, interval=0.2,
             what="the late results to arrive and be fenced")
        fenced_at = time.monotonic()
        assert held <= set(run_ids)

        # nothing changed by them: still one attempt per step, from the near node, every run succeeded
        again = query(db, f"select run_id, attempt, node from step_attempts where step = 'far' and run_id in "
                          f"({marks})", *run_ids)
        assert sorted(again) == sorted(attempts)
        duplicates = query(db, "select run_id, step, attempt from step_attempts group by run_id, step, attempt "
                               "having count(*) > 1")
        assert duplicates == []
        assert {s for (s,) in query(db, f"select status from runs where id in ({marks})", *run_ids)} == {"succeeded"}
        poll(lambda: query(db, "select count(*) from outbox") == [(0,)], timeout=30, what="the outbox to drain")
        poll(lambda: queue_depth(space["MINIFLOW_BROKER_URL"],
                                 space["MINIFLOW_NAMESPACE"]) == 0, timeout=60, what="the queues to drain")
        assert query(db, "select count(*) from dead_letters")[0][0] == letters_before

        outcome = Outcome(
            fault="executor.partitioned",
            injected=f"an executor in its own network namespace (heartbeat {HEARTBEAT_S} s) cut off from the "
                     f"broker while running {len(held)} steps; another node started after the cut",
            runs=RUNS, duplicates=len(duplicates),
            re_executions=near.log_path.read_text().count("redelivered: running it in an isolated process"),
            duplicate_results_ignored=len(fenced_runs(coordinator.log_path.read_text())),
            heal_to_terminal_s=0.0, restarts=0,
            notes=[f"every run ended {ended_at - cut_at:.1f} s after the cut, before the heal; the cut-off node's "
                   f"{len(held)} late results were fenced {fenced_at - healed_at:.1f} s after the heal"])
        record(outcome)
    finally:
        if not healed_at:
            node.heal()
        (hold / "release").touch()
        for worker in (near, far, coordinator):
            if worker is not None:
                worker.stop()
