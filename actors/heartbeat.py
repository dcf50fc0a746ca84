"""Heartbeats of the workers registry: every process says every ``interval_s`` that it is alive, what
it serves and what it is running, and says so once more when it stops cleanly.

Processes with a database (coordinator, results, timer, api) write their row directly; an executor
alone has only the broker, so its heartbeats go to the results queue (signed like its results) and a
results process records them. Readers compute the state from the last heartbeat and the interval the
process promised:

    alive     heard within LATE_AFTER x interval (2.5 beats: one lost heartbeat is not news)
    late      heard within GONE_AFTER x interval, not within LATE_AFTER x interval
    gone      not heard for GONE_AFTER x interval (6 beats; 30 s at the default 5 s): died, or cut off
    stopped   said it stopped (a clean SIGTERM/SIGINT)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import dramatiq

from miniflow.persistence import Database, WorkerRow
from miniflow.persistence.repository import workers as wrepo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.envelope import envelope
from miniflow.protocol.messages import MAX_HEARTBEAT_QUEUES, MAX_HEARTBEAT_RUNNING, WorkerHeartbeat
from miniflow.protocol.names import WORKER_HEARTBEAT, QueueNames

from .broker import publish
from .guard import as_message

logger = logging.getLogger("miniflow.heartbeat")

DEFAULT_INTERVAL_S = 5.0
LATE_AFTER = 2.5
GONE_AFTER = 6.0
ALIVE, LATE, GONE, STOPPED = "alive", "late", "gone", "stopped"
STATES = (ALIVE, LATE, GONE, STOPPED)

Send = Callable[[WorkerHeartbeat], None]
Status = Callable[[], tuple[int, list[dict[str, Any]]]]  # (busy, running steps)


def miniflow_version() -> str:
    try:
        return package_version("miniflow")[:40]
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def state_of(row: WorkerRow, now: datetime | None = None) -> str:
    """alive, late, gone or stopped (see the module docstring)."""
    if row.stopped_at is not None:
        return STOPPED
    silent = ((now or utcnow()) - row.last_seen).total_seconds()
    if silent <= LATE_AFTER * row.interval_s:
        return ALIVE
    return LATE if silent <= GONE_AFTER * row.interval_s else GONE


def row_of(beat: WorkerHeartbeat, namespace: str, seen: datetime) -> WorkerRow:
    """The registry row a heartbeat makes (``seen``: when it was received: the receiver's clock decides
    lateness, so a sender's skewed clock cannot make it look alive)."""
    started = datetime.fromtimestamp(beat.started_at, tz=seen.tzinfo)
    return WorkerRow(node=beat.node, kind=beat.kind, roles=",".join(beat.roles)[:100], queues=list(beat.queues),
                     threads=beat.threads, pid=beat.pid, version=beat.version, namespace=namespace,
                     started_at=started, last_seen=seen, interval_s=beat.interval_s, beat=beat.beat,
                     busy=beat.busy, running=list(beat.running), stopped_at=seen if beat.stopping else None)


def database_sender(db: Database, namespace: str) -> Send:
    def send(beat: WorkerHeartbeat) -> None:
        with db.transaction() as conn:
            wrepo.record_heartbeat(conn, row_of(beat, namespace, utcnow()))
    return send


def broker_sender(broker: dramatiq.Broker, names: QueueNames) -> Send:
    def send(beat: WorkerHeartbeat) -> None:
        publish(broker, as_message(envelope(names.results, WORKER_HEARTBEAT, beat.to_payload())))
    return send


class Heartbeat:
    """The heartbeat thread of one process."""

    def __init__(self, send: Send, *, node: str, kind: str, roles: Iterable[str], queues: Iterable[str],
                 threads: int, status: Status, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.send = send
        self.node = node
        self.kind = kind
        self.roles = list(roles)
        self.queues = sorted(queues)[:MAX_HEARTBEAT_QUEUES]
        self.threads = threads
        self.status = status
        self.interval_s = interval_s
        self.started_at = time.time()
        self.version = miniflow_version()
        self._beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def make(self, stopping: bool = False) -> WorkerHeartbeat:
        busy, running = self.status()
        self._beat += 1
        return WorkerHeartbeat(node=self.node, kind=self.kind, roles=self.roles, queues=self.queues,
                               threads=self.threads, pid=os.getpid(), version=self.version,
                               started_at=self.started_at, interval_s=self.interval_s, beat=self._beat,
                               busy=busy if not stopping else 0,
                               running=running[:MAX_HEARTBEAT_RUNNING] if not stopping else [], stopping=stopping)

    def beat_once(self, stopping: bool = False) -> bool:
        try:
            self.send(self.make(stopping))
        except Exception as exc:  # noqa: BLE001 - a heartbeat must never stop the process; the next one retries
            if not self._failing:
                logger.warning("heartbeat of %s not sent: %s", self.node, type(exc).__name__)
            self._failing = True
            return False
        if self._failing:
            logger.info("heartbeat of %s sent again", self.node)
        self._failing = False
        return True

    def start(self) -> None:
        self.beat_once()
        self._thread = threading.Thread(target=self._run, name="miniflow-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat_once()

    def stop(self) -> None:
        """Stop beating and say so (best effort: a process that cannot say it goes gone instead)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.beat_once(stopping=True)

