"""The coordinator's background loop: workflow deadlines every second, and every RECONCILE_EVERY_S
a repair pass over what messages lost in long outages left behind (``coordinator.reconcile``).

Any coordinator may do either; row locks serialise them. Each repair is its own transaction, and
what it queues is published after its commit.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from miniflow.coordinator import Coordinator, Reconciler
from miniflow.persistence import Database
from miniflow.persistence import repository as repo

from .metrics import NULL, Metrics
from .outages import DATABASE, OUTAGES, report
from .relay import Relay

WORKERS_KEEP_DAYS = 7  # registry rows of processes not heard of for this long are forgotten
logger = logging.getLogger("miniflow.actors")
RECONCILE_EVERY_S = 10.0
UNADVANCED_AFTER_S = 60.0  # a recorded attempt's step_finished normally lands within milliseconds
# Handled retry ids are kept this long: far longer than a message can wait to be redelivered, and
# than dramatiq keeps a dead-lettered one (7 days) for a replay.
HANDLED_KEEP_S = 30 * 24 * 3600.0


DEAD_LETTER_KEEP_S = 30 * 24 * 3600.0  # the archive's default retention (MINIFLOW_DEAD_LETTER_DAYS)


class ReconcileLoop:
    def __init__(self, db: Database, relay: Relay, coordinator: Coordinator, *,
                 dead_letter_keep_s: float = DEAD_LETTER_KEEP_S, metrics: Metrics = NULL) -> None:
        self.db = db
        self.metrics = metrics
        self.dead_letter_keep_s = dead_letter_keep_s
        self.relay = relay
        self.coordinator = coordinator
        self.reconciler = Reconciler(coordinator)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="miniflow-deadlines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, every_s: float = 1.0) -> None:
        next_reconcile = time.monotonic() + RECONCILE_EVERY_S
        while not self._stop.wait(every_s):
            try:
                with self.db.connect() as conn:
                    overdue = repo.overdue_run_ids(conn, self.coordinator.clock())
                expired = []
                for run_id in overdue:  # each in a transaction of its own (an end takes its workflow's gate)
                    with self.db.transaction() as conn:
                        if self.reconciler.expire(conn, run_id):
                            expired.append(run_id)
                OUTAGES.recovered(DATABASE)
                for run_id in expired:
                    logger.warning("run %s failed: workflow timeout", run_id)
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + RECONCILE_EVERY_S
                    self.run_once()
            except Exception as exc:  # noqa: BLE001 - a background loop outlives any one failure; next pass retries
                if not report(exc):
                    logger.warning("deadline check failed: %s", type(exc).__name__)

    def _admit_waiting_steps(self) -> bool:
        """Admit the steps waiting for slots of pools: those an admission skipped (their run was busy)
        or a raised limit made room for. False when the pass is to stop (the database is out)."""
        with self.db.connect() as conn:
            pools = repo.pools_with_waiting_steps(conn)
        for pool in pools:
            try:
                with self.db.transaction() as conn:
                    self.relay.publish(self.reconciler.admit_pool(conn, pool))
            except Exception as exc:  # noqa: BLE001 - the other pools still get their turn; this one next pass
                if report(exc):
                    return False
                logger.warning("could not admit the steps waiting for pool %s: %s", pool, type(exc).__name__)
        return True

    def run_once(self, unadvanced_after_s: float = UNADVANCED_AFTER_S) -> int:
        """One repair pass; returns how many steps were repaired (items another coordinator
        repaired first are skipped)."""
        now = self.coordinator.clock()
        with self.db.connect() as conn:
            unadvanced = repo.unadvanced_attempts(conn, now - timedelta(seconds=unadvanced_after_s))
            overdue = repo.overdue_results(conn, now)
        repaired = 0
        for kind, fix, items in (("unadvanced", self.reconciler.unadvanced, unadvanced),
                                 ("overdue", self.reconciler.overdue, overdue)):
            for run_id, step, attempt in items:
                try:
                    with self.db.transaction() as conn:
                        outgoing = fix(conn, run_id, step, attempt)
                    if outgoing is not None:
                        self.relay.publish(outgoing)
                        repaired += 1
                        self.metrics.repaired(kind)
                except Exception as exc:  # noqa: BLE001 - the others still get their turn; this one comes back next pass
                    if report(exc):
                        return repaired
                    logger.warning("could not reconcile run %s step %s attempt %d: %s", run_id, step, attempt,
                                   type(exc).__name__)
        with self.db.connect() as conn:
            waiting = repo.workflows_with_queued_runs(conn)
        for workflow in waiting:
            with self.db.transaction() as conn:
                self.relay.publish(self.reconciler.admit_queued(conn, workflow))
        if not self._admit_waiting_steps():
            return repaired
        with self.db.transaction() as conn:
            repo.prune_handled(conn, now - timedelta(seconds=HANDLED_KEEP_S))
            pruned = repo.prune_dead_letters(conn, now - timedelta(seconds=self.dead_letter_keep_s))
            repo.workers.prune_workers(conn, now - timedelta(days=WORKERS_KEEP_DAYS))
            repo.cache_clear(conn, expired_before=now)  # result cache entries past their ttl (never served)
        if pruned:
            logger.info("pruned %d archived dead letter(s) older than %.0f days", pruned,
                        self.dead_letter_keep_s / 86400)
        return repaired
