"""Publishing the outbox: right after each commit, and by a sweeper for rows left behind.

A row stays in the outbox until its message is published (with a publisher confirm on RabbitMQ);
published rows are deleted in batches by a background thread. If the process dies between commit
and publish, the sweeper of any coordinator/results process publishes the row once it is stale
(10 s); if it dies between publish and delete, the message goes out twice and the consumers dedupe
(runs by idempotency key, attempts by their unique key, events by fencing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import dramatiq

from miniflow.coordinator import Outgoing
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.protocol import codec
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import DecodeFailed

from .broker import publish
from .faults import NONE, FaultPoints
from .guard import as_message
from .metrics import NULL, Metrics
from .outages import BROKER, DATABASE, OUTAGES, report

logger = logging.getLogger("miniflow.relay")
DELETE_BATCH_WINDOW_S = 0.05  # published rows are deleted in one statement per window
SWEEP_BATCH = 50  # stale rows claimed, published and deleted per transaction
SWEEP_TX_BUDGET_S = 2.0  # publishing inside one sweep transaction stops after this long
SPREAD_FROM = 64  # a batch of at least this many messages is published by PUBLISHERS threads at once
PUBLISHERS = 4


class Relay:
    def __init__(self, broker: dramatiq.Broker, db: Database, *, stale_after_s: float = 10.0,
                 sweep_every_s: float = 5.0, faults: FaultPoints = NONE, metrics: Metrics = NULL,
                 namespace: str | None = None) -> None:
        self.broker = broker
        self.namespace = namespace  # sweep only this namespace's rows (None: every row, for one-namespace tools)
        self.metrics = metrics
        self.faults = faults
        self.db = db
        self.stale_after = timedelta(seconds=stale_after_s)
        self.sweep_every_s = sweep_every_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._published: list[str] = []
        self._publishers: ThreadPoolExecutor | None = None  # started on the first long batch
        self._thread: threading.Thread | None = None

    def publish(self, items: Sequence[Outgoing]) -> None:
        """Publish committed outbox messages (confirmed); their rows are deleted in batches by the
        background thread, a few milliseconds later, instead of one more commit per message. A long
        batch (a wide run's start) is spread over a few publisher threads, each on a connection of its
        own, so that their confirm waits overlap; it returns once all of them are confirmed."""
        if not items:
            return
        began = time.monotonic() if self.metrics.enabled else 0.0
        if len(items) >= SPREAD_FROM:
            self._spread(items)
        else:
            self._publish_all(items)
        self.faults.hit("coordinator.after_publish")
        if began:
            self.metrics.outbox(publish_s=time.monotonic() - began)
        OUTAGES.recovered(BROKER)
        with self._lock:
            self._published.extend(item.message_id for item in items)
        self._wake.set()

    def _publish_all(self, items: Sequence[Outgoing]) -> None:
        for item in items:
            if item.envelope is not None:  # fresh from this process: no need to decode the stored bytes
                publish(self.broker, as_message(item.envelope), delay=item.delay_ms)
            else:
                self._send(item.body, item.delay_ms)

    def _spread(self, items: Sequence[Outgoing]) -> None:
        """Publish ``items`` in PUBLISHERS contiguous parts at once; the first error, once all ended
        (a part that failed is left to the sweeper, as a failed publish always is)."""
        with self._lock:
            if self._stop.is_set():  # stopping: a handler still at work publishes its batch itself
                pool = None
            else:
                if self._publishers is None:
                    self._publishers = ThreadPoolExecutor(PUBLISHERS, thread_name_prefix="miniflow-publisher")
                pool = self._publishers
        if pool is None:
            self._publish_all(items)
            return
        size = -(-len(items) // PUBLISHERS)
        parts = [pool.submit(self._publish_all, items[i:i + size]) for i in range(0, len(items), size)]
        errors = [part.exception() for part in parts]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def delete_published(self) -> int:
        """Delete the rows of messages already published; returns how many."""
        with self._lock:
            ids, self._published = self._published, []
        if ids:
            try:
                with self.db.transaction() as conn:
                    repo.delete_outbox(conn, ids)
            except Exception:
                with self._lock:  # try again next time; the rows are only re-sent if they get stale
                    self._published[:0] = ids
                raise
        return len(ids)

    def _send(self, body: bytes, delay_ms: int | None) -> None:
        publish(self.broker, as_message(codec.unpack(body)), delay=delay_ms)

    def sweep_once(self) -> int:
        """Publish rows older than the stale cut-off; returns how many went out.

        Rows are claimed (locked against other sweepers) in small batches, each published and
        deleted in its own short transaction: a transaction is never held open for long while
        messages go out (the timer's sessions are cut off after 5 s idle in a transaction), and a
        backlog left by a long outage drains in one sweep rather than a batch per interval."""
        total = 0
        while not self._stop.is_set():
            sent, more = self._sweep_batch()
            total += sent
            if not more:
                break
        if total:
            logger.warning("relayed %d outbox message(s) left behind by a stopped publisher", total)
        return total

    def _sweep_batch(self) -> tuple[int, bool]:
        with self.db.transaction() as conn:
            rows = repo.claim_stale_outbox(conn, utcnow() - self.stale_after, limit=SWEEP_BATCH,
                                           namespace=self.namespace)
            done: list[str] = []
            started = time.monotonic()
            for row in rows:
                if done and time.monotonic() - started > SWEEP_TX_BUDGET_S:
                    break  # the broker is slow: commit what went out, claim the rest afresh
                try:
                    self._send(row.body, row.delay_ms)
                except DecodeFailed as exc:  # permanent: never let one bad row block the others
                    logger.error("dropping outbox message %s that can never be sent: %s", row.message_id, exc.code)
                done.append(row.message_id)
            repo.delete_outbox(conn, done)
        return len(done), len(rows) == SWEEP_BATCH or len(done) < len(rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="miniflow-outbox-sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.sweep_every_s
        while not self._stop.is_set():
            self._wake.wait(min(self.sweep_every_s, max(0.0, next_sweep - time.monotonic())))
            self._wake.clear()
            try:
                if not self._stop.is_set():
                    time.sleep(DELETE_BATCH_WINDOW_S)  # let a batch of ids gather first
                self.delete_published()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_every_s
                    self.sweep_once()
                    OUTAGES.recovered(DATABASE)
            except Exception as exc:  # noqa: BLE001 - keep going: the database or broker may come back
                if not report(exc):
                    logger.warning("outbox upkeep failed: %s", _short(exc))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            pool, self._publishers = self._publishers, None
        if pool is not None:
            pool.shutdown(wait=True)
        try:
            self.delete_published()
        except Exception as exc:  # noqa: BLE001 - stopping anyway; the rows are re-sent when stale
            logger.warning("could not delete published outbox rows at stop (they will be re-sent): %s",
                           _short(exc))


def _short(exc: Any) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
