"""The timer: turns cron schedules into start_workflow messages, exactly once per tick.

Any number of timers may run. Each one wakes at the next fire time across the schedules (waits
are capped at ``max_sleep_s`` so new, paused and resumed schedules are seen), then, per due
schedule, runs :meth:`coordinator.scheduling.Scheduler.process` in one transaction (the schedule
row locked, ledger rows inserted with ON CONFLICT DO NOTHING, start messages written to the
outbox) and publishes the outbox after commit. A timer killed between commit and publish leaves
outbox rows that any relay's sweeper sends; a timer stopped inside a transaction is cut off by
Postgres after ``IDLE_IN_TRANSACTION_MS``, so it cannot hold a schedule's lock for long.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

import dramatiq
from sqlalchemy import event

from miniflow.coordinator import Outgoing, Scheduler
from miniflow.coordinator.schedule_policy import TickOutcome, jitter_for
from miniflow.persistence import Database
from miniflow.persistence.repository import schedules as srepo
from miniflow.persistence.sealing import KeyRing
from miniflow.protocol.clock import Clock, utcnow
from miniflow.protocol.names import QueueNames

from .guard import node_name
from .metrics import NULL, Metrics
from .outages import DATABASE, OUTAGES, report
from .relay import Relay

logger = logging.getLogger("miniflow.timer")
IDLE_IN_TRANSACTION_MS = 5000


def limit_idle_transactions(db: Database, timeout_ms: int = IDLE_IN_TRANSACTION_MS) -> None:
    """On Postgres: end sessions left idle inside a transaction (a SIGSTOPped timer holding a lock)."""
    if db.is_sqlite:
        return

    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET idle_in_transaction_session_timeout = {int(timeout_ms)}")
        cursor.close()
        dbapi_connection.commit()

    event.listen(db.engine, "connect", _on_connect)


class Timer:
    """One timer loop. ``run(stop)`` until the event is set; ``run_once()`` for tests."""

    def __init__(self, db: Database, broker: dramatiq.Broker | None, names: QueueNames, *,
                 clock: Clock = utcnow, relay: Relay | None = None, node: str | None = None,
                 max_sleep_s: float = 1.0, keys: KeyRing | None = None, metrics: Metrics = NULL) -> None:
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self.node = node or node_name()
        self.scheduler = Scheduler(names, node=self.node, keys=keys)
        if relay is None:
            assert broker is not None, "a timer needs a broker or a relay"
            relay = Relay(broker, db, namespace=names.namespace)
        self.relay = relay
        self.max_sleep_s = max_sleep_s
        self.fired = 0  # messages published by this timer (for tests and logs)

    def run_once(self) -> float:
        """Handle every due tick; returns how long to sleep before the next pass (seconds)."""
        now = self.clock()
        with self.db.connect() as conn:
            rows = srepo.active_schedules(conn)
            buffered = srepo.schedules_with_outcome(conn, TickOutcome.BUFFERED)
        wake: datetime | None = None
        worked = False
        for row in rows:
            due = row.next_due_at
            assert due is not None
            fire = due + jitter_for(row.id, due, row.jitter_s)
            if fire <= now:
                self.metrics.cron_fired((now - fire).total_seconds())
                self._drain(row.id, now)
                worked = True
            elif wake is None or fire < wake:
                wake = fire
        for schedule_id in buffered:
            with self.db.transaction() as conn:
                outgoing = self.scheduler.release_buffered(conn, schedule_id, now)
            self._publish(outgoing)
        if worked:
            return 0.0
        if wake is None:
            return self.max_sleep_s
        return max(0.0, min(self.max_sleep_s, (wake - self.clock()) / timedelta(seconds=1)))

    def _drain(self, schedule_id: str, now: datetime) -> None:
        more = True
        while more:
            with self.db.transaction() as conn:
                outgoing, more = self.scheduler.process(conn, schedule_id, now)
            self._publish(outgoing)

    def _publish(self, outgoing: list[Outgoing]) -> None:
        if outgoing:
            self.relay.publish(outgoing)
            self.fired += len(outgoing)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                delay = self.run_once()
                OUTAGES.recovered(DATABASE)
            except Exception as exc:  # noqa: BLE001 - keep ticking: the database or broker may come back
                if not report(exc):
                    logger.warning("timer pass failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0:1])
                delay = 1.0
            if delay > 0:
                stop.wait(delay)
