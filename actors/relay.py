"""Publishing the outbox: right after each commit, and by a sweeper for rows left behind.

A row stays in the outbox until its message is published (with a publisher confirm on RabbitMQ).
If the process dies between commit and publish, the sweeper of any coordinator/results process
publishes it later; if it dies between publish and delete, the message goes out twice and the
consumers dedupe (runs by idempotency key, attempts by their unique key, events by fencing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import dramatiq

from coordinator.service import Outgoing
from persistence import Database
from persistence import repository as repo
from protocol import codec

from .guard import as_message

logger = logging.getLogger("miniflow.relay")


class Relay:
    def __init__(self, broker: dramatiq.Broker, db: Database, *, stale_after_s: float = 10.0,
                 sweep_every_s: float = 5.0) -> None:
        self.broker = broker
        self.db = db
        self.stale_after = timedelta(seconds=stale_after_s)
        self.sweep_every_s = sweep_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, items: Sequence[Outgoing]) -> None:
        """Publish committed outbox messages, then delete their rows."""
        if not items:
            return
        for item in items:
            self._send(item.body, item.delay_ms)
        with self.db.transaction() as conn:
            repo.delete_outbox(conn, [item.message_id for item in items])

    def _send(self, body: bytes, delay_ms: int | None) -> None:
        message = as_message(codec.unpack(body))
        self.broker.enqueue(message, delay=delay_ms)

    def sweep_once(self) -> int:
        """Publish rows older than the stale cut-off; returns how many went out."""
        with self.db.transaction() as conn:
            rows = repo.claim_stale_outbox(conn, repo.utcnow() - self.stale_after)
            for row in rows:
                self._send(row["body"], row["delay_ms"])
            repo.delete_outbox(conn, [row["message_id"] for row in rows])
        if rows:
            logger.warning("relayed %d outbox message(s) left behind by a stopped publisher", len(rows))
        return len(rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="miniflow-outbox-sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.sweep_every_s):
            try:
                self.sweep_once()
            except Exception as exc:  # keep sweeping: the database or broker may come back
                logger.warning("outbox sweep failed: %s", _short(exc))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _short(exc: Any) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
