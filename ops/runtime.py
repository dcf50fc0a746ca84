"""Running MiniFlow: a worker process for some roles, and the embedded single-process runner."""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq

from actors import ROLES, Node, declare_topology, load_step_modules, make_broker
from actors import registry as step_registry
from actors.faults import FaultPoints
from actors.guard import as_message
from coordinator import Workflow, resolve_params
from persistence import Database
from persistence import repository as repo
from protocol.errors import ConfigError, DefinitionError
from protocol.messages import CancelRun, RetryRun, StartWorkflow, envelope
from protocol.names import CANCEL_RUN, RETRY_RUN, START_WORKFLOW, QueueNames

from .settings import Settings
from .telemetry import setup as telemetry_setup

logger = logging.getLogger("miniflow.runtime")


def import_steps(modules: list[str] | tuple[str, ...]) -> list[str]:
    """Import step modules, with the working folder importable (as `python -m` would have it)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_step_modules(modules)


def run_worker(settings: Settings, roles: list[str], steps: list[str], pools: list[str], threads: int,
               ready: Callable[[str], None] = print) -> int:
    """Serve the given roles until SIGINT/SIGTERM. Returns the exit code."""
    roles = roles or list(ROLES)
    url = settings.require_broker()
    if "executor" in roles:
        if not steps:
            raise ConfigError("the executor role needs --steps MODULE (the module(s) that register steps)")
        import_steps(steps)
    needs_db = bool({"coordinator", "results"} & set(roles))
    if needs_db and settings.database_url.startswith("sqlite"):
        raise ConfigError("workers need Postgres (MINIFLOW_DATABASE_URL=postgresql://...): SQLite has no row "
                          "locks across processes; use `miniflow run` for the embedded, single-process mode")
    telemetry = telemetry_setup("miniflow-" + "-".join(sorted(roles)))
    db = Database(settings.database_url, pool_size=threads + 2) if needs_db else None
    if db is not None:
        telemetry.instrument_engine(db.engine)
    names = QueueNames(settings.namespace)
    broker = make_broker(url, names)
    node = Node(broker, names, roles, db=db, pools=pools, faults=FaultPoints(settings.faultpoints))
    declare_topology(broker, names, pools)
    worker = dramatiq.Worker(broker, worker_threads=threads, queues=node.queues())
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    broker.emit_after("process_boot")
    worker.start()
    node.start_background()
    ready(f"miniflow worker ready: node={node.node} roles={','.join(node.roles)} "
          f"queues={','.join(sorted(node.queues()))} {settings.describe(with_database=needs_db)}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        logger.info("stopping worker %s", node.node)
        node.stop_background()
        worker.stop(timeout=10_000)
        broker.close()
        if db is not None:
            db.dispose()
        telemetry.shutdown()
    return 0


@dataclass
class EmbeddedRun:
    run_id: str
    status: str
    error: str | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)


class EmbeddedEngine:
    """Every role in this process: dramatiq's in-memory broker and SQLite (or any database).

    Used by `miniflow run` and by the unit tests: start it, deploy workflows, submit starts, wait
    for runs. Events from the executor (step started / finished) go to ``on_event``.
    """

    def __init__(self, database_url: str, *, threads: int = 8, namespace: str = "miniflow",
                 pools: list[str] | tuple[str, ...] = (),
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.db = Database(database_url)
        self.names = QueueNames(namespace)
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.on_event = on_event
        self.db.upgrade()
        self.broker = make_broker(None, self.names)
        self.node = Node(self.broker, self.names, ROLES, db=self.db, pools=pools,
                         listener=lambda kind, data: self.events.put((kind, data)))
        declare_topology(self.broker, self.names, pools)
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=100)
        self._started = False

    def start(self) -> EmbeddedEngine:
        self.broker.emit_after("process_boot")
        self.worker.start()
        self.node.start_background()
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self.node.stop_background()
            self.worker.stop()
            self._started = False
        self.broker.close()
        self.db.dispose()

    def __enter__(self) -> EmbeddedEngine:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def deploy(self, workflow: Workflow, source: str | None = None) -> int:
        for pool in {s.queue for s in workflow.steps.values() if s.queue}:
            self.broker.declare_queue(self.names.step_queue(pool))
        with self.db.transaction() as conn:
            version, _ = self.node.coordinator.deploy(conn, workflow, source)
        return version

    def submit(self, workflow: str, params: dict[str, Any] | None = None, *, version: int | None = None,
               key: str | None = None, priority: int = 0) -> str:
        """Send a start-workflow message; returns the idempotency key to find the run by."""
        key = key or f"embedded:{uuid.uuid4()}"
        start = StartWorkflow(workflow=workflow, version=version, params=dict(params or {}),
                              idempotency_key=key, priority=priority)
        self.broker.enqueue(as_message(envelope(self.names.ingress, START_WORKFLOW, start.to_payload())))
        return key

    def cancel(self, run_id: str, reason: str = "") -> None:
        self.broker.enqueue(as_message(envelope(self.names.ingress, CANCEL_RUN,
                                                CancelRun(run_id=run_id, reason=reason).to_payload())))

    def retry(self, run_id: str, *, message_id: str | None = None) -> str:
        """Send a retry request; returns its message id (the same id twice is one retry)."""
        body = envelope(self.names.ingress, RETRY_RUN, RetryRun(run_id=run_id).to_payload(), message_id=message_id)
        self.broker.enqueue(as_message(body))
        return str(body["message_id"])

    def wait(self, key: str, *, timeout: float | None = None, poll_s: float = 0.02) -> EmbeddedRun:
        """Wait until the run of an idempotency key ends; TimeoutError past the deadline."""
        deadline = time.monotonic() + timeout if timeout else None
        run_id = None
        while True:
            self.drain_events()
            with self.db.connect() as conn:
                run_id = run_id or repo.run_id_for_key(conn, key)
                run = repo.get_run(conn, run_id) if run_id else None
            if run is not None and run["status"] in ("succeeded", "failed", "cancelled"):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run of {key} did not finish within {timeout:g}s "
                                   f"(status: {run['status'] if run else 'not created'})")
            time.sleep(poll_s)
        # Let late messages (results of cancelled steps, dead-letter reports) settle.
        self.settle()
        assert run_id is not None
        return self.result(run_id)

    def settle(self, timeout_ms: int = 10_000) -> None:
        for q in (self.names.ingress, self.names.coordinator, self.names.results):
            self.broker.join(q, timeout=timeout_ms, fail_fast=False)  # type: ignore[call-arg]
        self.drain_events()

    def result(self, run_id: str) -> EmbeddedRun:
        with self.db.connect() as conn:
            run = repo.get_run(conn, run_id)
            assert run is not None
            workflow = self.node.coordinator.workflow(conn, run["workflow"], run["version"])
            steps = [dict(r) for r in repo.get_steps(conn, run_id).values()]
            attempts = [dict(a) for a in repo.get_attempts(conn, run_id)]
        order = list(workflow.steps) if workflow else []
        steps.sort(key=lambda s: order.index(s["step"]) if s["step"] in order else 0)
        return EmbeddedRun(run_id, run["status"], run["error"], steps, attempts)

    def drain_events(self) -> None:
        while True:
            try:
                kind, data = self.events.get_nowait()
            except queue.Empty:
                return
            if self.on_event is not None:
                self.on_event(kind, data)


def run_embedded(workflow: Workflow, params: dict[str, Any], database_url: str, *, source: str | None = None,
                 threads: int = 8, timeout: float | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> EmbeddedRun:
    """Run one workflow in this process and return how it ended (`miniflow run`)."""
    missing = [f"step {s.name!r} uses task {s.task!r}" for s in workflow.steps.values()
               if s.task not in step_registry]
    if missing:
        raise DefinitionError(source or workflow.name, "no loaded step module registers: "
                              + "; ".join(missing) + " (pass --steps MODULE)")
    resolve_params(workflow, params)  # bad params fail here, before anything runs
    pools = [s.queue for s in workflow.steps.values() if s.queue]
    with EmbeddedEngine(database_url, threads=threads, pools=pools, on_event=on_event) as engine:
        version = engine.deploy(workflow, source)
        key = engine.submit(workflow.name, params, version=version)
        return engine.wait(key, timeout=timeout)
