"""The embedded mode: every role in this process, on dramatiq's in-memory broker and SQLite (or any
database). `miniflow run FILE` uses it, and so do the unit tests."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq

from miniflow.actors import ROLES, EmbeddedBroker, Node, declare_topology, make_broker
from miniflow.actors import registry as step_registry
from miniflow.actors.guard import as_message
from miniflow.actors.metrics import NULL, Metrics
from miniflow.actors.middleware import TracingInstrument
from miniflow.actors.registry import Registry
from miniflow.coordinator import Coordinator, Workflow, resolve_params
from miniflow.persistence import AttemptRow, Database, RunRow, StepRow
from miniflow.persistence import repository as repo
from miniflow.persistence.artifacts import ArtifactStore
from miniflow.persistence.offload import Offload
from miniflow.persistence.sealing import KeyRing
from miniflow.protocol.auth import CoreKey, StaticKeys
from miniflow.protocol.envelope import envelope
from miniflow.protocol.errors import DefinitionError
from miniflow.protocol.messages import CancelRun, RetryRun, StartWorkflow
from miniflow.protocol.names import CANCEL_RUN, RETRY_RUN, START_WORKFLOW, QueueNames
from miniflow.protocol.states import RUN_TERMINAL

from .polling import poll_until
from .settings import DEFAULT_ARTIFACT_THRESHOLD, DEFAULT_ARTIFACTS

Listener = Callable[[str, dict[str, Any]], None]


@dataclass
class EmbeddedRun:
    """How a run ended: its steps in the workflow's order and every recorded attempt."""

    run_id: str
    status: str
    error: str | None
    steps: list[StepRow] = field(default_factory=list)
    attempts: list[AttemptRow] = field(default_factory=list)


class EmbeddedEngine:
    """Every role in this process. Start it, deploy workflows, submit starts, wait for runs. Events
    from the executor (step started / finished) go to ``on_event``."""

    def __init__(self, database_url: str, *, threads: int = 8, namespace: str = "miniflow",
                 pools: list[str] | tuple[str, ...] = (), on_event: Listener | None = None,
                 keys: KeyRing | None = None, auth: bool = True, metrics: Metrics = NULL,
                 registry: Registry | None = None, background: bool = True, offload: Offload | None = None) -> None:
        self.db = Database(database_url)
        # The artifact store: given, or a folder beside the SQLite file (or in the working folder).
        self.offload = offload or Offload(ArtifactStore(beside(database_url)), DEFAULT_ARTIFACT_THRESHOLD)
        self.names = QueueNames(namespace)
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.on_event = on_event
        self.db.upgrade()
        # Message authentication as in a deployment, with a core key that lives as long as this
        # process: every message is signed, and checked when consumed (auth=False: off).
        self.auth = StaticKeys(core=[CoreKey.generate()]) if auth else None
        broker = make_broker(None, self.names, keys=self.auth)
        assert isinstance(broker, EmbeddedBroker)
        self.broker = broker
        # Without a configured data key, secret params are sealed with a key that lives as long as
        # this process: the embedded mode's runs begin and end in it.
        coordinator = Coordinator(self.names, instrument=TracingInstrument(), keys=keys or KeyRing.ephemeral())
        self.background = background  # the relay's sweeper and the deadline loop (the test engine drives them)
        self.node = Node(self.broker, self.names, ROLES, db=self.db, pools=pools, coordinator=coordinator,
                         registry=registry, listener=lambda kind, data: self.events.put((kind, data)), metrics=metrics,
                         offload=self.offload)
        declare_topology(self.broker, self.names, pools)
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=100)
        self._started = False

    def start(self) -> EmbeddedEngine:
        self.broker.emit_after("process_boot")
        self.worker.start()
        if self.background:
            self.node.start_background()
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            if self.background:
                self.node.stop_background()
            self.worker.stop()
            self._started = False
        self.broker.close()
        self.db.dispose()

    def __enter__(self) -> EmbeddedEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def deploy(self, workflow: Workflow, source: str | None = None) -> int:
        for pool in {s.queue for s in workflow.steps.values() if s.queue}:
            self.broker.declare_queue(self.names.step_queue(pool))
        with self.db.transaction() as conn:
            version, _ = self.node.coordinator.catalog.deploy(conn, workflow, source)
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

    def run(self, run_id: str) -> RunRow | None:
        with self.db.connect() as conn:
            return repo.get_run(conn, run_id)

    def wait(self, key: str, *, timeout: float | None = None, poll_s: float = 0.02) -> EmbeddedRun:
        """Wait until the run of an idempotency key ends; WaitTimedOut past the deadline."""
        found: dict[str, str] = {}

        def ended() -> str | None:
            self.drain_events()
            with self.db.connect() as conn:
                run_id = found.get("id") or repo.run_id_for_key(conn, key)
                run = repo.get_run(conn, run_id) if run_id else None
            if run is None:
                return None
            found["id"], found["status"] = run.id, run.status
            return run.id if run.status in RUN_TERMINAL else None

        run_id = poll_until(ended, timeout=timeout, interval=poll_s, what=f"the run of {key} to finish",
                            state=lambda: f"status: {found.get('status', 'not created')}")
        self.settle()  # let late messages (results of cancelled steps, dead-letter reports) settle
        return self.result(run_id)

    def settle(self, timeout_ms: int = 10_000) -> None:
        for q in (self.names.ingress, self.names.coordinator, self.names.results):
            self.broker.join(q, timeout=timeout_ms, fail_fast=False)
        self.drain_events()

    def result(self, run_id: str) -> EmbeddedRun:
        with self.db.connect() as conn:
            run = repo.get_run(conn, run_id)
            assert run is not None
            workflow = self.node.coordinator.catalog.workflow(conn, run.workflow, run.version)
            steps = list(repo.get_steps(conn, run_id).values())
            attempts = repo.get_attempts(conn, run_id)
        order = list(workflow.steps) if workflow else []
        steps.sort(key=lambda s: order.index(s.step) if s.step in order else 0)
        return EmbeddedRun(run_id, run.status, run.error, steps, attempts)

    def drain_events(self) -> None:
        while True:
            try:
                kind, data = self.events.get_nowait()
            except queue.Empty:
                return
            if self.on_event is not None:
                self.on_event(kind, data)


def beside(database_url: str) -> str:
    """The default artifact folder of an embedded engine: ``<file>.artifacts`` beside its SQLite file,
    else .miniflow-artifacts in the working folder."""
    prefix = "sqlite:///"
    path = database_url[len(prefix):] if database_url.startswith(prefix) else ""
    return f"{path}.artifacts" if path and path != ":memory:" else DEFAULT_ARTIFACTS


def run_embedded(workflow: Workflow, params: dict[str, Any], database_url: str, *, source: str | None = None,
                 threads: int = 8, timeout: float | None = None, on_event: Listener | None = None,
                 keys: KeyRing | None = None, offload: Offload | None = None) -> EmbeddedRun:
    """Run one workflow in this process and return how it ended (`miniflow run`)."""
    missing = [f"step {s.name!r} uses task {s.task!r}" for s in workflow.steps.values()
               if s.task not in step_registry]
    if missing:
        raise DefinitionError(source or workflow.name, "no loaded step module registers: "
                              + "; ".join(missing) + " (pass --steps MODULE)")
    resolve_params(workflow, params)  # bad params fail here, before anything runs
    pools = [s.queue for s in workflow.steps.values() if s.queue]
    with EmbeddedEngine(database_url, threads=threads, pools=pools, on_event=on_event, keys=keys,
                        offload=offload) as engine:
        version = engine.deploy(workflow, source)
        key = engine.submit(workflow.name, params, version=version)
        return engine.wait(key, timeout=timeout)
