"""Faults on the real RabbitMQ and Postgres: processes killed at named points, poison steps,
cancel and retry. Each test runs its own workers in its own namespace (they get killed)."""

from __future__ import annotations

import functools
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import BIN, BROKER_URL, ROOT, WorkerProcess, miniflow, poll, query

POISON = """
name: poison
steps:
  - {name: boom, task: test.crash}
"""
SLOW = """
name: slow-chain
steps:
  - {name: first, task: test.sleep, config: {seconds: 3}}
  - {name: second, task: test.flaky, needs: [first], config: {fail_times: 0}}
"""
DOOMED = """
name: doomed
steps:
  - {name: only, task: test.boom, retries: 0}
"""


class Supervised:
    """A worker that is started again whenever it dies (as systemd or Kubernetes would)."""

    def __init__(self, env: dict[str, str], args: list[str], logs: Path) -> None:
        self.env, self.args, self.logs = env, args, logs
        self.starts = 0
        self.stopping = threading.Event()
        self.current: WorkerProcess | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.starts += 1
            self.current = WorkerProcess(self.env, self.args, self.logs / f"{self.starts}.log")
            self.current.proc.wait()

    def stop(self) -> None:
        self.stopping.set()
        if self.current is not None:
            self.current.stop()
        self.thread.join(timeout=30)


@pytest.fixture
def space(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

    ns = f"{env['MINIFLOW_NAMESPACE']}_f{uuid.uuid4().hex[:4]}"
    own = dict(env, MINIFLOW_NAMESPACE=ns)
    assert miniflow(own, "db", "upgrade").returncode == 0
    for name, text in (("diamond", None), ("poison", POISON), ("slow", SLOW), ("doomed", DOOMED)):
        path = ROOT / "examples" / "diamond.yaml" if text is None else tmp_path / f"{name}.yaml"
        if text is not None:
            path.write_text(text)
        assert miniflow(own, "deploy", str(path)).returncode == 0
    yield own
    delete_topology(BROKER_URL, QueueNames(ns))


def run_status(db: str, key: str) -> tuple[Any, ...] | None:
    rows = query(db, "select id, status, error from runs where idempotency_key = %s", key)
    return rows[0] if rows and rows[0][1] in ("succeeded", "failed", "cancelled") else None


def publish(env: dict[str, str], workflow: str, key: str, *params: str) -> None:
    args = [str(BIN / "miniflow"), "start", workflow, "--key", key]
    for p in params:
        args += ["-p", p]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_poison_step_fails_its_run_with_a_reason_while_other_runs_flow(space, tmp_path):
    coordinator = WorkerProcess(space, ["--role", "coordinator", "--role", "results"], tmp_path / "coord.log")
    executors = Supervised(space, ["--steps", "tests.steps_for_tests", "--steps", "examples.steps"], tmp_path)
    try:
        coordinator.wait_ready()
        db = space["MINIFLOW_DATABASE_URL"]
        poison_key, good_keys = f"poison-{uuid.uuid4()}", [f"good-{uuid.uuid4()}" for _ in range(3)]
        publish(space, "poison", poison_key)
        for key in good_keys:
            publish(space, "diamond", key, "x=2")
        _, status, error = poll(lambda: run_status(db, poison_key), timeout=120, what="the poison run to end")
        assert status == "failed"
        assert "poison" in error and "killed the process running it" in error
        for key in good_keys:
            assert poll(functools.partial(run_status, db, key), timeout=120, what="a good run")[1] == "succeeded"
        assert executors.starts >= 2  # the executor really died once, and came back
        attempts = query(db, "select count(*) from step_attempts a join runs r on r.id = a.run_id "
                             "where r.idempotency_key = %s", poison_key)
        assert attempts == [(1,)]  # one attempt, recorded once, as failed
    finally:
        executors.stop()
        coordinator.stop()


def test_a_coordinator_killed_after_commit_before_publish_loses_nothing(space, tmp_path):
    doomed = dict(space, MINIFLOW_TEST_FAULTPOINT="coordinator.after_commit")
    coordinator = WorkerProcess(doomed, ["--role", "coordinator", "--role", "results"], tmp_path / "doomed.log")
    executor = WorkerProcess(space, ["--steps", "examples.steps"], tmp_path / "exec.log")
    restarted = None
    try:
        coordinator.wait_ready()
        executor.wait_ready()
        db = space["MINIFLOW_DATABASE_URL"]
        key = f"fault-{uuid.uuid4()}"
        publish(space, "diamond", key, "x=3")
        assert coordinator.proc.wait(timeout=60) == -9  # killed itself right after its first commit
        # the run is committed, its first step message is only in the outbox
        assert query(db, "select status from runs where idempotency_key = %s", key) == [("running",)]
        assert query(db, "select count(*) from outbox")[0][0] >= 1
        restarted = WorkerProcess(space, ["--role", "coordinator", "--role", "results"], tmp_path / "again.log")
        restarted.wait_ready()
        _, status, _ = poll(lambda: run_status(db, key), timeout=90, what="the run after the restart")
        assert status == "succeeded"
        duplicates = query(db, "select run_id, step, attempt, count(*) from step_attempts "
                               "group by run_id, step, attempt having count(*) > 1")
        assert duplicates == []
        poll(lambda: query(db, "select count(*) from outbox")[0][0] == 0, timeout=30, what="the outbox to drain")
    finally:
        for w in (coordinator, executor, restarted):
            if w is not None:
                w.stop()


@pytest.fixture
def workers(space: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """One coordinator+results process and one executor of the test steps, both ready."""
    started: list[WorkerProcess] = []
    try:
        for args, log in ((["--role", "coordinator", "--role", "results"], "coord.log"),
                          (["--steps", "tests.steps_for_tests"], "exec.log")):
            started.append(WorkerProcess(space, args, tmp_path / log))
        for worker in started:
            worker.wait_ready()
        yield
    finally:
        for worker in started:
            worker.stop()


def test_cancel_and_retry_from_the_command_line(space, workers):
    db = space["MINIFLOW_DATABASE_URL"]
    key = f"cancel-{uuid.uuid4()}"
    publish(space, "slow-chain", key)
    run_id = poll(lambda: query(db, "select id from runs where idempotency_key = %s", key),
                  what="the run")[0][0]
    cancelled = miniflow(space, "runs", "cancel", run_id, "--reason", "not today")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled" in cancelled.stdout
    again = miniflow(space, "runs", "cancel", run_id)  # idempotent: the run had ended, nothing to do
    assert again.returncode == 0 and "had already ended (cancelled)" in again.stdout
    retried = miniflow(space, "runs", "retry", run_id, "--wait", "--timeout", "60")
    assert retried.returncode == 0, retried.stderr + retried.stdout
    shown = json.loads(miniflow(space, "runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "succeeded"
    assert {s["step"]: s["status"] for s in shown["steps"]} == {"first": "succeeded", "second": "succeeded"}


def test_coordinator_and_results_in_separate_processes_talk_through_step_finished(space, tmp_path):
    workers = [WorkerProcess(space, ["--role", "coordinator"], tmp_path / "coord.log"),
               WorkerProcess(space, ["--role", "results"], tmp_path / "results.log"),
               WorkerProcess(space, ["--steps", "examples.steps"], tmp_path / "exec.log")]
    try:
        for w in workers:
            w.wait_ready()
        result = miniflow(space, "start", "diamond", "-p", "x=4", "--wait", "--timeout", "60", "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        detail = json.loads(result.stdout)
        assert {s["step"]: s["output"] for s in detail["steps"]} == {"a": 4, "b": 8, "c": 16, "d": 24}
        poll(lambda: query(space["MINIFLOW_DATABASE_URL"], "select count(*) from outbox") == [(0,)],
             what="the outbox to drain")
    finally:
        for w in workers:
            w.stop()


def test_retry_of_a_run_that_fails_again_at_once_is_reported_as_retried(space, workers):
    """The re-run may fail again before the command looks: it must still see that it was retried."""
    db = space["MINIFLOW_DATABASE_URL"]
    key = f"doomed-{uuid.uuid4()}"
    publish(space, "doomed", key)
    run_id, status, _ = poll(lambda: run_status(db, key), timeout=60, what="the doomed run to fail")
    assert status == "failed"
    for round_, args in enumerate((["--wait", "--timeout", "60"], []), start=2):
        retried = miniflow(space, "runs", "retry", run_id, *args)
        assert "not retried" not in retried.stderr, retried.stderr
        # with --wait it follows the re-run to its end (failed again: exit 1); without, exit 0
        assert retried.returncode == (1 if args else 0), retried.stderr + retried.stdout
        def rerun_ended(n: int = round_) -> bool:
            count = query(db, "select count(*) from step_attempts where run_id = %s", run_id)[0][0]
            return bool(count == n and run_status(db, key) is not None)

        poll(rerun_ended, timeout=60, what=f"re-run {round_} to end")
    assert [a for (a,) in query(db, "select attempt from step_attempts where run_id = %s order by attempt",
                                run_id)] == [1, 2, 3]
