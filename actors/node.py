"""The actors of one process, bound to one broker by role.

    role          actors (queue)                                               handlers
    coordinator   start_workflow, cancel_run, retry_run (<ns>.ingress);        handlers.CoreHandlers
                  step_finished (<ns>.coordinator)
    results       record_result, record_dead_letter,                           handlers.CoreHandlers
                  worker_heartbeat (<ns>.results)
    executor      execute_step (<ns>.steps and <ns>.steps.<pool>)              executor.Executor

Roles may share a process. Coordinator and results need the database; an executor needs only
the broker. Actors are created at run time (not at import), so the namespace and broker come
from settings and tests can build as many nodes as they like.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from miniflow.coordinator import Coordinator
from miniflow.coordinator import pools as slot_pools
from miniflow.persistence import Database
from miniflow.persistence.offload import Offload
from miniflow.protocol.auth import Capabilities
from miniflow.protocol.envelope import payload_of
from miniflow.protocol.errors import ConfigError, MessageRejected
from miniflow.protocol.names import (
    CANCEL_RUN,
    EXECUTE_STEP,
    RECORD_DEAD_LETTER,
    RECORD_RESULT,
    RETRY_RUN,
    START_WORKFLOW,
    STEP_FINISHED,
    STEP_PROGRESS,
    WORKER_HEARTBEAT,
    QueueNames,
)

from .executor import Executor
from .faults import NONE as NO_FAULTS
from .faults import FaultPoints
from .guard import node_name
from .handlers import CoreHandlers
from .metrics import NULL, CountingInstrument, Metrics
from .middleware import Rejections, Tracing, TracingInstrument
from .middleware.activity import Activity
from .progress import RUNNING_AFTER_S, ProgressReporter
from .reconciler import DEAD_LETTER_KEEP_S, ReconcileLoop
from .registry import Registry
from .registry import registry as global_registry
from .relay import Relay
from .turns import Turns

logger = logging.getLogger("miniflow.actors")

COORDINATOR = "coordinator"
RESULTS = "results"
EXECUTOR = "executor"
ROLES = (COORDINATOR, RESULTS, EXECUTOR)
STEP_TIME_LIMIT_CEILING_MS = 24 * 3600 * 1000  # step time limits travel per message (options.time_limit)

Listener = Callable[[str, dict[str, Any]], None]
Handler = Callable[[dict[str, Any]], None]


class Node:
    """The actors of one process, for the given roles, on one broker."""

    def __init__(self, broker: dramatiq.Broker, names: QueueNames, roles: Iterable[str], *,
                 db: Database | None = None, registry: Registry | None = None,
                 pools: Iterable[str] = (), coordinator: Coordinator | None = None,
                 listener: Listener | None = None, faults: FaultPoints = NO_FAULTS,
                 running_after_s: float = RUNNING_AFTER_S, dead_letter_keep_s: float = DEAD_LETTER_KEEP_S,
                 metrics: Metrics = NULL, offload: Offload | None = None) -> None:
        self.broker = broker
        self.metrics = metrics
        self.activity = Activity(metrics)
        self.names = names
        self.roles = tuple(dict.fromkeys(roles))
        unknown = [r for r in self.roles if r not in ROLES]
        if unknown or not self.roles:
            raise ConfigError(f"unknown role(s) {unknown}: choose from {', '.join(ROLES)}")
        self.pools = tuple(dict.fromkeys(p for p in pools if p))
        self.node = node_name()
        self.listener = listener
        self.coordinator = coordinator or Coordinator(names, instrument=TracingInstrument())
        self.coordinator.offload = offload  # the artifact store: map steps over stored lists, large results
        if metrics.enabled:
            self.coordinator.instrument = CountingInstrument(self.coordinator.instrument, metrics)
        # Message authentication is on when the broker checks signatures: then the coordinator issues
        # each attempt a capability and the results role checks it (protocol/auth.py).
        guard = getattr(broker, "guard", None)
        keys = guard.verifier.keys if guard is not None and guard.verifier is not None else None
        if guard is not None:
            guard.metrics = metrics
        self.caps = Capabilities(keys) if keys is not None else None
        if self.caps is not None:
            self.coordinator.caps = self.caps
        self._stop = threading.Event()
        self.turns = Turns(counted=metrics.large_body)
        self.db = db
        self.relay: Relay | None = None
        self.handlers: CoreHandlers | None = None
        self.reconciler: ReconcileLoop | None = None
        if COORDINATOR in self.roles or RESULTS in self.roles:
            if db is None:
                raise ConfigError("the coordinator and results roles need a database (MINIFLOW_DATABASE_URL)")
            self.relay = Relay(broker, db, faults=faults, metrics=metrics, namespace=names.namespace)
            self.coordinator.publish = self.relay.publish  # what a run's end admits, published at once
            self.coordinator.admit_later = self._admit_pools  # slots given back: admitted in a transaction after
            self.handlers = CoreHandlers(db, self.relay, self.coordinator, advance=COORDINATOR in self.roles,
                                         faults=faults, emit=self._emit, caps=self.caps, metrics=metrics)
            if RESULTS in self.roles:
                metrics.archives_dead_letters()
            if COORDINATOR in self.roles:
                self.reconciler = ReconcileLoop(db, self.relay, self.coordinator,
                                                dead_letter_keep_s=dead_letter_keep_s, metrics=metrics)
        self.progress = ProgressReporter(broker, names, self.node, after_s=running_after_s) \
            if EXECUTOR in self.roles else None
        self.executor = Executor(broker, names, registry or global_registry, self.node, faults=faults,
                                 stop=self._stop, emit=self._emit, progress=self.progress, metrics=metrics,
                                 offload=offload) \
            if self.progress is not None else None
        self._install_middleware()
        self._declare()

    # -- wiring -----------------------------------------------------------------------------------
    def _install_middleware(self) -> None:
        present = {type(m) for m in self.broker.middleware}
        if CurrentMessage not in present:
            self.broker.add_middleware(CurrentMessage())
        guard = getattr(self.broker, "guard", None)
        if guard is not None and Rejections not in present:
            self.broker.add_middleware(Rejections(guard))
        if Tracing not in present:
            self.broker.add_middleware(Tracing())
        if Activity not in present:
            self.broker.add_middleware(self.activity)
        else:
            self.activity = next(m for m in self.broker.middleware if isinstance(m, Activity))

    def _actor(self, handler: Handler, name: str, queue: str, *, turns: Turns | None = None, **options: Any) -> None:
        options.setdefault("throws", (MessageRejected,))

        def actor(*args: Any, **kwargs: Any) -> None:  # exactly one payload map (the guard checks it first)
            if turns is None:
                handler(payload_of(args, kwargs))
                return
            with turns.turn(getattr(CurrentMessage.get_current_message(), "body_bytes", 0)):
                handler(payload_of(args, kwargs))

        dramatiq.Actor(actor, broker=self.broker, actor_name=name, queue_name=queue, priority=0, options=options)

    def _declare(self) -> None:
        turns = self.turns  # large bodies take turns in the core roles (actors/turns.py)
        if self.handlers is not None and COORDINATOR in self.roles:
            self._actor(self.handlers.start_workflow, START_WORKFLOW, self.names.ingress, turns=turns)
            self._actor(self.handlers.cancel_run, CANCEL_RUN, self.names.ingress, turns=turns)
            self._actor(self.handlers.retry_run, RETRY_RUN, self.names.ingress, turns=turns)
            self._actor(self.handlers.step_finished, STEP_FINISHED, self.names.coordinator, turns=turns)
            self._actor(self.handlers.step_progress, STEP_PROGRESS, self.names.coordinator, turns=turns)
        if self.handlers is not None and RESULTS in self.roles:
            self._actor(self.handlers.record_result, RECORD_RESULT, self.names.results, turns=turns)
            self._actor(self.handlers.record_dead_letter, RECORD_DEAD_LETTER, self.names.results, turns=turns)
            self._actor(self.handlers.worker_heartbeat, WORKER_HEARTBEAT, self.names.results, turns=turns)
        if self.executor is not None:
            self._actor(self.executor.execute_step, EXECUTE_STEP, self.names.steps,
                        time_limit=STEP_TIME_LIMIT_CEILING_MS)
            for pool in self.pools:
                self.broker.declare_queue(self.names.step_queue(pool))

    def queues(self) -> set[str]:
        """The canonical queues this node consumes (the Worker's whitelist)."""
        queues: set[str] = set()
        if COORDINATOR in self.roles:
            queues |= {self.names.ingress, self.names.coordinator}
        if RESULTS in self.roles:
            queues.add(self.names.results)
        if EXECUTOR in self.roles:
            queues.add(self.names.steps)
            queues |= {self.names.step_queue(p) for p in self.pools}
        return queues

    # -- background threads -----------------------------------------------------------------------
    def start_background(self) -> None:
        if self.progress is not None:
            self.progress.start()
        if self.relay is not None:
            self.relay.start()
        if self.reconciler is not None:
            self.reconciler.start()

    def stop_background(self) -> None:
        self._stop.set()
        if self.reconciler is not None:
            self.reconciler.stop()
        if self.relay is not None:
            self.relay.stop()
        if self.progress is not None:
            self.progress.stop()

    def status(self) -> tuple[int, list[dict[str, Any]]]:
        """What this node is doing now, for its heartbeat: messages being handled, attempts running."""
        return self.activity.busy, (self.progress.running() if self.progress is not None else [])

    def _admit_pools(self, pools: list[str]) -> None:
        """Slots of ``pools`` came back in a transaction that has committed: admit the steps waiting
        for them in a transaction of their own (so no transaction takes two pools' rows out of
        order). If this fails, the reconciler's next pass admits them."""
        assert self.db is not None and self.relay is not None
        try:
            with self.db.transaction() as conn:
                outgoing = slot_pools.released(self.coordinator, conn, pools)
            self.relay.publish(outgoing)
        except Exception as exc:  # noqa: BLE001 - the reconciler's pass admits what this missed
            logger.warning("admitting the steps waiting for pool(s) %s failed (%s); the reconciler's next pass "
                           "will", ", ".join(pools), type(exc).__name__)

    def _emit(self, kind: str, **data: Any) -> None:
        if self.listener is not None:
            try:
                self.listener(kind, data)
            except Exception:  # noqa: BLE001 - a listener must never break a step
                logger.exception("event listener failed on %s", kind)
