"""Long-running processes: `miniflow worker` (actors for some roles) and `miniflow timer` (cron).

Both serve until SIGINT or SIGTERM, then stop cleanly, and print one ``ready`` line once they
consume. Settings come in as a typed object; nothing here reads the environment.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import dramatiq

from miniflow.actors import (
    COORDINATOR,
    EXECUTOR,
    RESULTS,
    ROLES,
    Node,
    declare_topology,
    load_step_modules,
    make_broker,
)
from miniflow.actors.broker import check_broker, wait_for_queues
from miniflow.actors.faults import FaultPoints
from miniflow.actors.heartbeat import DEFAULT_INTERVAL_S, Heartbeat, broker_sender, database_sender, miniflow_version
from miniflow.actors.metrics import NULL, Metrics, ScrapeGauges
from miniflow.actors.metrics import serve as serve_metrics
from miniflow.actors.middleware import TracingInstrument
from miniflow.actors.outages import BROKER, DATABASE, OUTAGES
from miniflow.actors.progress import RUNNING_AFTER_S
from miniflow.actors.relay import Relay
from miniflow.actors.timer import Timer, limit_idle_transactions
from miniflow.coordinator import Catalog, Coordinator
from miniflow.persistence import Database
from miniflow.protocol.errors import ConfigError
from miniflow.protocol.names import QueueNames

from .memory import Trimmer, cap_arenas, fix_mmap_threshold
from .settings import Settings
from .signing import core_keys, executor_keys
from .telemetry import setup as telemetry_setup

logger = logging.getLogger("miniflow.runtime")
Ready = Callable[[str, dict[str, Any]], None]  # the ready line, and the same as data


def import_steps(modules: list[str] | tuple[str, ...]) -> list[str]:
    """Import step modules, with the working folder importable (as `python -m` would have it)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_step_modules(modules)


def default_threads(roles: list[str]) -> int:
    """16 with the coordinator or results role (they mostly wait on the database and the broker), 8
    for an executor alone."""
    return 16 if {COORDINATOR, RESULTS} & set(roles or ROLES) else 8


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def preflight(settings: Settings, db: Database | None) -> None:
    """Check the database (when the roles need it) and the broker before anything starts: an
    unreachable one is DatabaseUnavailable or BrokerUnavailable (exit 3, one line), never a
    traceback and never a "ready" line. Outages after that are told by the outage tracker."""
    url = settings.require_broker()
    if db is not None:
        db.ping()
        OUTAGES.watch(DATABASE, db.url, 5432)
    check_broker(url)
    OUTAGES.watch(BROKER, url, 5671 if url.startswith("amqps") else 5672)


def start_metrics(settings: Settings, kind: str, port: int | None) -> tuple[Metrics, str]:
    """The process's metrics, served on ``port`` (or MINIFLOW_METRICS_PORT); NULL and "" when off. A
    port that cannot be bound is a ConfigError (exit 2), before anything else starts."""
    port = port if port is not None else settings.metrics_port
    if port is None:
        return NULL, ""
    metrics = Metrics(kind, miniflow_version())
    try:
        server = serve_metrics(metrics, port)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on port {port}: {exc.strerror}") from None
    OUTAGES.on_recovered = metrics.reconnected
    return metrics, f" metrics=http://0.0.0.0:{server.server_port}/metrics"


def watch_gauges(metrics: Metrics, settings: Settings, db: Database, names: QueueNames) -> None:
    """Scrape-time gauges (queues, workers, active runs, outbox) from the monitors' reads."""
    if not metrics.enabled:
        return
    from .monitor.snapshot import gauges

    catalog = Catalog()
    metrics.add_collector(ScrapeGauges(
        lambda: gauges(db, catalog, names, settings.broker_url, settings.rabbitmq_api_url)))


def _dramatiq_worker(broker: dramatiq.Broker, threads: int, queues: set[str]) -> dramatiq.Worker:
    """dramatiq's worker with as many messages prefetched per queue as it has threads, not twice as
    many (unless ``dramatiq_queue_prefetch`` says otherwise): fewer large bodies wait decoded in
    memory, and it measured no slower (docs/performance.md)."""
    worker = dramatiq.Worker(broker, worker_threads=threads, queues=queues)
    worker.queue_prefetch = int(os.environ.get("dramatiq_queue_prefetch") or 0) or threads  # 0: unset, as dramatiq
    return worker


def run_worker(settings: Settings, roles: list[str], steps: list[str], pools: list[str], threads: int,
               ready: Ready = lambda line, _: print(line), running_after_s: float = RUNNING_AFTER_S,
               metrics_port: int | None = None, heartbeat_s: float = DEFAULT_INTERVAL_S) -> int:
    """Serve the given roles until SIGINT/SIGTERM. Returns the exit code."""
    cap_arenas()  # before any thread of this process makes a malloc arena of its own (ops/memory.py)
    roles = roles or list(ROLES)
    if COORDINATOR in roles or RESULTS in roles:  # where large messages pass through (an executor's steps own theirs)
        fix_mmap_threshold()
    url = settings.require_broker()
    if EXECUTOR in roles:
        if not steps:
            raise ConfigError("the executor role needs --steps MODULE (the module(s) that register steps)")
        import_steps(steps)
    needs_db = bool({COORDINATOR, RESULTS} & set(roles))
    if needs_db and settings.database_url.startswith("sqlite"):
        raise ConfigError("workers need Postgres (MINIFLOW_DATABASE_URL=postgresql://...): SQLite has no row "
                          "locks across processes; use `miniflow run` for the embedded, single-process mode")
    db = Database(settings.database_url, pool_size=threads + 2) if needs_db else None
    preflight(settings, db)
    metrics, served = start_metrics(settings, "worker", metrics_port)
    metrics.threads(threads)
    telemetry = telemetry_setup("miniflow-" + "-".join(sorted(roles)))
    if db is not None and settings.trace_sql:  # a span per statement: opt-in (docs/tracing.md, its cost)
        telemetry.instrument_engine(db.engine)
    names = QueueNames(settings.namespace)
    keys = core_keys(settings, db) if db is not None else executor_keys(settings)
    alone = set(roles) == {EXECUTOR}  # an executor alone declares its step queues only
    stop = _stop_on_signals()
    if alone and not wait_for_queues(url, [names.results, names.coordinator], stop):
        return 0
    broker = make_broker(url, names, keys=keys, signed_starts=settings.signed_starts,
                         owns=names.is_step_queue if alone else None)
    coordinator = Coordinator(names, instrument=TracingInstrument(), keys=settings.data_keys)
    node = Node(broker, names, roles, db=db, pools=pools, faults=FaultPoints(settings.faultpoints),
                running_after_s=running_after_s, coordinator=coordinator,
                dead_letter_keep_s=settings.dead_letter_days * 86400, metrics=metrics, offload=settings.offload())
    if db is not None and COORDINATOR in roles:
        watch_gauges(metrics, settings, db, names)
    declare_topology(broker, names, pools, steps_only=alone)
    worker = _dramatiq_worker(broker, threads, node.queues())
    broker.emit_after("process_boot")
    worker.start()
    node.start_background()
    heartbeat = Heartbeat(database_sender(db, names.namespace) if db is not None else broker_sender(broker, names),
                          node=node.node, kind="worker", roles=node.roles, queues=node.queues(), threads=threads,
                          status=node.status, interval_s=heartbeat_s)
    heartbeat.start()
    ready(f"miniflow worker ready: node={node.node} roles={','.join(node.roles)} "
          f"queues={','.join(sorted(node.queues()))} {settings.describe(with_database=needs_db)}{served}",
          {"ready": "worker", "node": node.node, "roles": list(node.roles), "queues": sorted(node.queues()),
           "namespace": settings.namespace, "metrics": served.partition("=")[2] or None})
    trimmer = Trimmer()
    try:
        while not stop.wait(0.5):  # woken by the signal handler (a timed wait keeps signals prompt)
            trimmer.tick()  # freed memory back to the system after a burst of large messages
    finally:
        logger.info("stopping worker %s", node.node)
        node.stop_background()
        worker.stop(timeout=10_000)
        heartbeat.stop()  # the last heartbeat says "stopped" (through the broker for an executor alone)
        broker.close()
        if db is not None:
            db.dispose()
        telemetry.shutdown()
    return 0


def run_timer(settings: Settings, max_sleep_s: float, ready: Ready = lambda line, _: print(line),
              metrics_port: int | None = None, heartbeat_s: float = DEFAULT_INTERVAL_S) -> int:
    """Run a cron timer until SIGINT/SIGTERM (any number may run: each tick fires once)."""
    url = settings.require_broker()
    if settings.database_url.startswith("sqlite"):
        raise ConfigError("timers need Postgres (MINIFLOW_DATABASE_URL=postgresql://...): several timers "
                          "fence each tick with row locks that SQLite does not have across processes")
    names = QueueNames(settings.namespace)
    database = Database(settings.database_url, pool_size=4)
    preflight(settings, database)
    metrics, served = start_metrics(settings, "timer", metrics_port)
    limit_idle_transactions(database)
    broker = make_broker(url, names, keys=core_keys(settings, database), signed_starts=settings.signed_starts)
    declare_topology(broker, names)
    relay = Relay(broker, database, metrics=metrics, namespace=names.namespace)
    loop = Timer(database, broker, names, relay=relay, max_sleep_s=max_sleep_s, keys=settings.data_keys,
                 metrics=metrics)
    stop = _stop_on_signals()
    relay.start()
    heartbeat = Heartbeat(database_sender(database, names.namespace), node=loop.node, kind="timer", roles=["timer"],
                          queues=[], threads=1, status=lambda: (0, []), interval_s=heartbeat_s)
    heartbeat.start()
    ready(f"miniflow timer ready: node={loop.node} {settings.describe()}{served}",
          {"ready": "timer", "node": loop.node, "namespace": settings.namespace,
           "metrics": served.partition("=")[2] or None})
    try:
        loop.run(stop)
    finally:
        heartbeat.stop()
        relay.stop()
        broker.close()
        database.dispose()
    return 0
