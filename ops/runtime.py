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
from actors.guard import as_message
from coordinator import Workflow, resolve_params
from persistence import Database
from persistence import repository as repo
from protocol.errors import ConfigError, DefinitionError
from protocol.messages import StartWorkflow, envelope
from protocol.names import START_WORKFLOW, QueueNames

from .settings import Settings

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
    db = Database(settings.database_url, pool_size=threads + 2) if needs_db else None
    names = QueueNames(settings.namespace)
    broker = make_broker(url, names)
    node = Node(broker, names, roles, db=db, pools=pools)
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
          f"queues={','.join(sorted(node.queues()))} {settings.describe()}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        logger.info("stopping worker %s", node.node)
        node.stop_background()
        worker.stop(timeout=10_000)
        broker.emit_before("process_stop")
        broker.close()
        if db is not None:
            db.dispose()
    return 0


@dataclass
class EmbeddedRun:
    run_id: str
    status: str
    error: str | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)


class EmbeddedRunner:
    """Runs a workflow in this process: dramatiq's in-memory broker, SQLite (or any database)."""

    def __init__(self, database_url: str, *, threads: int = 8, namespace: str = "miniflow") -> None:
        self.db = Database(database_url)
        self.threads = threads
        self.names = QueueNames(namespace)
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

    def run(self, workflow: Workflow, params: dict[str, Any], source: str | None = None, *,
            timeout: float | None = None, on_event: Callable[[str, dict[str, Any]], None] | None = None,
            poll_s: float = 0.05) -> EmbeddedRun:
        missing = [f"step {s.name!r} uses task {s.task!r}" for s in workflow.steps.values()
                   if s.task not in step_registry]
        if missing:
            raise DefinitionError(source or workflow.name, "no loaded step module registers: " + "; ".join(missing)
                                  + " (pass --steps MODULE)")
        resolve_params(workflow, params)  # bad params fail here, before anything runs
        self.db.upgrade()
        broker = make_broker(None, self.names)
        pools = [s.queue for s in workflow.steps.values() if s.queue]
        node = Node(broker, self.names, ROLES, db=self.db, pools=pools,
                    listener=lambda kind, data: self.events.put((kind, data)))
        declare_topology(broker, self.names, pools)
        with self.db.transaction() as conn:
            version, _ = node.coordinator.deploy(conn, workflow, source)
        worker = dramatiq.Worker(broker, worker_threads=self.threads, worker_timeout=100)
        broker.emit_after("process_boot")
        worker.start()
        node.start_background()
        key = f"embedded:{uuid.uuid4()}"
        start = StartWorkflow(workflow=workflow.name, version=version, params=params, idempotency_key=key)
        broker.enqueue(as_message(envelope(self.names.ingress, START_WORKFLOW, start.to_payload())))
        deadline = time.monotonic() + timeout if timeout else None
        try:
            run_id = None
            while True:
                self._drain(on_event)
                with self.db.connect() as conn:
                    run_id = run_id or repo.run_id_for_key(conn, key)
                    run = repo.get_run(conn, run_id) if run_id else None
                if run is not None and run["status"] in ("succeeded", "failed", "cancelled"):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"run did not finish within {timeout:g}s")
                time.sleep(poll_s)
            broker.join(self.names.results, timeout=10_000, fail_fast=False)
            self._drain(on_event)
        finally:
            node.stop_background()
            worker.stop()
            broker.close()
        with self.db.connect() as conn:
            run = repo.get_run(conn, run_id)
            steps = [dict(r) for r in repo.get_steps(conn, run_id).values()]
            attempts = [dict(a) for a in repo.get_attempts(conn, run_id)]
        assert run is not None
        order = list(workflow.steps)
        steps.sort(key=lambda s: order.index(s["step"]))
        return EmbeddedRun(run_id, run["status"], run["error"], steps, attempts)

    def _drain(self, on_event: Callable[[str, dict[str, Any]], None] | None) -> None:
        while True:
            try:
                kind, data = self.events.get_nowait()
            except queue.Empty:
                return
            if on_event is not None:
                on_event(kind, data)

    def close(self) -> None:
        self.db.dispose()
