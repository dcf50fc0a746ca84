"""The fault matrix: a batch of diamond runs across two worker processes of each role, one fault
injected (into the private services of private_services.py), the killed process restarted, then the
guarantees checked (see docs/reliability.md).

Checks after quiescence:
  lost          confirmed starts without a run (must be 0)
  duplicates    (run, step, attempt) recorded more than once (must be 0)
  terminal      every run ended within the bound
  outbox        drained
  queues        the namespace's queues empty
  dead letters  none (nothing poisonous was injected)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pika

from .conftest import ROOT, WorkerProcess, miniflow, query

REPORT = ROOT / "reports" / "faults.json"


@dataclass
class Outcome:
    fault: str
    injected: str
    runs: int
    lost: int = 0
    duplicates: int = 0
    non_terminal: int = 0
    failed_runs: int = 0
    re_executions: int = 0  # step messages redelivered after their executor died
    duplicate_results_ignored: int = 0
    outbox_left: int = 0
    queued_left: int = 0
    dead_letters: int = 0
    heal_to_terminal_s: float = 0.0
    restarts: int = 0
    notes: list[str] = field(default_factory=list)


class Restartable:
    """A worker process that is started again, without its fault point, whenever it dies."""

    def __init__(self, env: dict[str, str], args: list[str], logs: Path, name: str,
                 fault_env: dict[str, str] | None = None) -> None:
        self.env, self.args, self.logs, self.name = env, args, logs, name
        self.fault_env = fault_env
        self.restarts = 0
        self.died_at: float | None = None
        self.healed_at: float | None = None
        self.stopping = threading.Event()
        self.current = WorkerProcess(dict(env, **(fault_env or {})), args, logs / f"{name}-0.log")
        self.current.wait_ready()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopping.is_set():
            code = self.current.proc.wait()
            if self.stopping.is_set():
                return
            self.died_at = self.died_at or time.monotonic()
            self.restarts += 1
            self.current = WorkerProcess(self.env, self.args, self.logs / f"{self.name}-{self.restarts}.log")
            try:
                self.current.wait_ready()
            except AssertionError:
                continue
            self.healed_at = time.monotonic()
            del code

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"{self.name}-*.log")))

    def stop(self) -> None:
        self.stopping.set()
        self.current.stop()
        self.thread.join(timeout=30)


def publish_all(env: dict[str, str], keys: list[str], retry_for_s: float = 120, pace_s: float = 0.0,
                workflow: str = "diamond", params: dict[str, Any] | None = None) -> list[str]:
    """Publish a start per key with confirms, retrying each until confirmed; returns confirmed keys."""
    from miniflow.protocol.errors import BrokerUnavailable
    from miniflow.protocol.publisher import Publisher

    confirmed: list[str] = []
    deadline = time.monotonic() + retry_for_s
    publisher = Publisher(env["MINIFLOW_BROKER_URL"], env["MINIFLOW_NAMESPACE"], connect_timeout=5)
    try:
        for key in keys:
            while True:
                try:
                    publisher.start_workflow(workflow, params={"x": 2} if params is None else params,
                                             idempotency_key=key)
                    confirmed.append(key)
                    time.sleep(pace_s)
                    break
                except BrokerUnavailable:
                    if time.monotonic() > deadline:
                        break
                    publisher.close()
                    time.sleep(0.5)
    finally:
        publisher.close()
    return confirmed


def queue_depth(broker_url: str, namespace: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    total = 0
    try:
        for base in ("ingress", "coordinator", "results", "steps"):
            for suffix in ("", ".DQ"):
                channel = connection.channel()
                try:
                    total += channel.queue_declare(f"{namespace}.{base}{suffix}", passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:
                    pass
    finally:
        connection.close()
    return total


def _until_terminal(db: str, keys: list[str], deadline: float) -> None:
    """Wait (measuring, never failing) until every run of ``keys`` has ended or the deadline passed."""
    placeholders = ",".join(["%s"] * len(keys))
    while True:
        rows = query(db, f"select status from runs where idempotency_key in ({placeholders})", *keys)
        done = [r for r in rows if r[0] in ("succeeded", "failed", "cancelled")]
        if len(done) == len(keys) or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _settle(outcome: Outcome, env: dict[str, str], within_s: float = 30) -> None:
    """Let the relay and sweepers finish their upkeep, then record what is left in outbox and queues."""
    settle = time.monotonic() + within_s
    while time.monotonic() < settle:
        outcome.outbox_left = query(env["MINIFLOW_DATABASE_URL"], "select count(*) from outbox")[0][0]
        outcome.queued_left = queue_depth(env["MINIFLOW_BROKER_URL"], env["MINIFLOW_NAMESPACE"])
        if outcome.outbox_left == 0 and outcome.queued_left == 0:
            return
        time.sleep(0.5)


def run_scenario(env: dict[str, str], logs: Path, fault: str, injected: str, *, runs: int = 20,
                 coordinator_fault: str | None = None, executor_fault: str | None = None,
                 inject: Callable[[], None] | None = None, bound_s: float = 180, pace_s: float = 0.0,
                 definition: Path = ROOT / "examples" / "diamond.yaml", workflow: str = "diamond",
                 params: dict[str, Any] | None = None) -> Outcome:
    """One row of the matrix, in its own namespace (so a fault stays inside it); ``definition``
    and ``workflow``: what the runs start (the diamond of the examples unless given), with ``params``."""
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

    ns = f"{env['MINIFLOW_NAMESPACE']}_m{uuid.uuid4().hex[:4]}"
    env = dict(env, MINIFLOW_NAMESPACE=ns)
    db = env["MINIFLOW_DATABASE_URL"]
    for args in (("db", "upgrade"), ("deploy", str(definition))):
        result = miniflow(env, *args)
        assert result.returncode == 0, result.stderr
    before_letters = query(db, "select count(*) from dead_letters")[0][0]
    workers: list[Restartable] = []
    try:
        cfault = {"MINIFLOW_TEST_FAULTPOINT": coordinator_fault} if coordinator_fault else None
        efault = {"MINIFLOW_TEST_FAULTPOINT": executor_fault} if executor_fault else None
        role_args = ["--role", "coordinator", "--role", "results", "--threads", "4"]
        exec_args = ["--steps", "examples.steps", "--threads", "4"]
        workers = [
            Restartable(env, role_args, logs, "coord-a", cfault),
            Restartable(env, role_args, logs, "coord-b"),
            Restartable(env, exec_args, logs, "exec-a", efault),
            Restartable(env, exec_args, logs, "exec-b"),
        ]
        keys = [f"{fault}-{uuid.uuid4()}" for _ in range(runs)]
        injector = threading.Thread(target=inject, daemon=True) if inject else None
        if injector:
            injector.start()
        confirmed = publish_all(env, keys, pace_s=pace_s, workflow=workflow, params=params)
        if injector:
            injector.join(timeout=bound_s)
        healed = time.monotonic()
        _until_terminal(db, confirmed, healed + bound_s)
        placeholders = ",".join(["%s"] * len(confirmed))
        for w in workers:  # heal time counts from the last restart that brought a process back
            if w.healed_at:
                healed = max(healed, w.healed_at) if w.healed_at < time.monotonic() else healed
        finished = time.monotonic()
        outcome = Outcome(fault=fault, injected=injected, runs=len(confirmed))
        if len(confirmed) < len(keys):
            outcome.notes.append(f"{len(keys) - len(confirmed)} start(s) never confirmed")
        run_rows = query(db, f"select id, status from runs where idempotency_key in ({placeholders})", *confirmed)
        outcome.lost = len(confirmed) - len(run_rows)
        outcome.non_terminal = sum(1 for _, s in run_rows if s not in ("succeeded", "failed", "cancelled"))
        outcome.failed_runs = sum(1 for _, s in run_rows if s != "succeeded")
        ids = [r[0] for r in run_rows] or ["-"]
        id_marks = ",".join(["%s"] * len(ids))
        outcome.duplicates = len(query(db, "select run_id, step, attempt from step_attempts where run_id in "
                                       f"({id_marks}) group by run_id, step, attempt having count(*) > 1", *ids))
        outcome.heal_to_terminal_s = round(max(0.0, finished - healed), 2)
        _settle(outcome, env)
        outcome.dead_letters = query(db, "select count(*) from dead_letters")[0][0] - before_letters
        logs_text = "".join(w.log_text() for w in workers)
        outcome.re_executions = logs_text.count("redelivered: running it in an isolated process")
        outcome.duplicate_results_ignored = logs_text.count("duplicate result ignored")
        outcome.restarts = sum(w.restarts for w in workers)
        return outcome
    finally:
        for w in workers:
            w.stop()
        delete_topology(env["MINIFLOW_BROKER_URL"], QueueNames(ns))


def record(outcome: Outcome) -> None:
    REPORT.parent.mkdir(exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[outcome.fault] = asdict(outcome)
    REPORT.write_text(json.dumps(data, indent=2) + "\n")


__all__ = ["Outcome", "miniflow", "queue_depth", "record", "run_scenario"]
