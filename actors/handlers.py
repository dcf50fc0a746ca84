"""The handlers of the coordinator and results roles: decode a payload, run the coordinating
service in one transaction, publish what it queued once the transaction has committed.

    coordinator   start_workflow, cancel_run, retry_run (<ns>.ingress); step_finished (<ns>.coordinator)
    results       record_result, record_dead_letter, worker_heartbeat (<ns>.results)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dramatiq.middleware import CurrentMessage
from sqlalchemy.engine import Connection

from miniflow.coordinator import Coordinator, Outgoing, Results
from miniflow.persistence import Database
from miniflow.persistence.repository import workers as wrepo
from miniflow.protocol.auth import Capabilities
from miniflow.protocol.clock import utcnow
from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import DataRejected, MessageRejected
from miniflow.protocol.messages import (
    CancelRun,
    DeadLetterReport,
    RetryRun,
    StartWorkflow,
    StepFinished,
    StepProgress,
    StepResult,
    WorkerHeartbeat,
)
from miniflow.protocol.states import StepStatus

from .combiner import Combiner, Entry
from .faults import FaultPoints
from .heartbeat import row_of
from .metrics import NULL, Metrics
from .middleware.tracing import annotate, current_trace_id
from .relay import Relay

logger = logging.getLogger("miniflow.actors")
Emit = Callable[..., None]


def _message_id() -> str:
    message = CurrentMessage.get_current_message()
    return message.message_id if message is not None else ""


class CoreHandlers:
    """The database-backed handlers of one node. ``advance`` is True when the coordinator role runs
    in the same process as the results role: a recorded result then advances its run at once."""

    def __init__(self, db: Database, relay: Relay, coordinator: Coordinator, *, advance: bool,
                 faults: FaultPoints, emit: Emit, caps: Capabilities | None = None, metrics: Metrics = NULL) -> None:
        self.db = db
        self.metrics = metrics
        self.caps = caps  # checks the capability of reported attempts (None: message authentication off)
        self.relay = relay
        self.coordinator = coordinator
        self.results = Results(coordinator)
        self.advance = advance
        self.faults = faults
        self.emit = emit
        # results (with the coordinator in-process) and step_finished events of one run, arriving
        # together, are applied in one transaction: one lock of the run's row and one commit for all
        self.results_together: Combiner[StepResult] = Combiner(self._record_results)
        self.events_together: Combiner[StepFinished] = Combiner(self._apply_events)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction whose failures that only the message can cause (a value the database
        refuses, one that cannot be converted) reject the message instead of retrying it."""
        try:
            with self.db.transaction() as conn:
                yield conn
        except DataRejected as exc:
            raise MessageRejected(Reason.UNSTORABLE_VALUE, str(exc)) from exc
        except (ValueError, OverflowError) as exc:
            raise MessageRejected(Reason.BAD_VALUE, f"a value of the message cannot be used: {type(exc).__name__}") \
                from exc

    # -- coordinator role -------------------------------------------------------------------------
    def start_workflow(self, payload: dict[str, Any]) -> None:
        start = StartWorkflow.from_payload(payload)
        annotate(workflow=start.workflow)
        with self._transaction() as conn:
            outcome = self.coordinator.start(conn, start, _message_id(), trace_id=current_trace_id())
        self.faults.hit("coordinator.after_commit")
        annotate(run_id=outcome.run_id,
                 outcome=("queued" if outcome.queued else "started") if outcome.created else "duplicate")
        self.relay.publish(outcome.outgoing)
        if outcome.created:
            self.metrics.run_started(start.workflow)
            logger.info("run %s of %s %s", outcome.run_id, start.workflow,
                        "queued: no room under its concurrency limits" if outcome.queued else "started")
            self.emit("run_started", run_id=outcome.run_id, workflow=start.workflow)
        else:
            logger.info("duplicate start of %s: run %s exists", start.workflow, outcome.run_id)

    def cancel_run(self, payload: dict[str, Any]) -> None:
        request = CancelRun.from_payload(payload)
        annotate(run_id=request.run_id)
        with self._transaction() as conn:
            cancelled = self.coordinator.cancel(conn, request)
        logger.info("run %s %s", request.run_id, "cancelled" if cancelled else "had already ended")

    def retry_run(self, payload: dict[str, Any]) -> None:
        request = RetryRun.from_payload(payload)
        annotate(run_id=request.run_id)
        with self._transaction() as conn:
            outgoing = self.coordinator.retry(conn, request, _message_id())
        if outgoing is None:
            return
        self.faults.hit("coordinator.after_commit")
        self.relay.publish(outgoing)
        logger.info("run %s retried", request.run_id)

    def step_finished(self, payload: dict[str, Any]) -> None:
        event = StepFinished.from_payload(payload)
        annotate(run_id=event.run_id, step=event.step, attempt=event.attempt)
        self.events_together.submit(event.run_id, event)

    def _apply_events(self, entries: Sequence[Entry[StepFinished]]) -> list[BaseException | None]:
        return self._together(entries, self.coordinator.step_finished, "coordinator.after_commit")

    def step_progress(self, payload: dict[str, Any]) -> None:
        event = StepProgress.from_payload(payload)
        if self.caps is not None:
            self.caps.check(event.cap, event.run_id, event.step, event.attempt)
        with self._transaction() as conn:
            self.coordinator.progress(conn, event)

    # -- results role -----------------------------------------------------------------------------
    def record_result(self, payload: dict[str, Any]) -> None:
        result = StepResult.from_payload(payload)
        annotate(run_id=result.run_id, step=result.step, attempt=result.attempt, node=result.node,
                 outcome=StepStatus.SUCCEEDED if result.ok else StepStatus.FAILED)
        if self.caps is not None:
            self.caps.check(result.cap, result.run_id, result.step, result.attempt)
        if not self.advance:  # recording alone takes no lock of the run: nothing to combine
            with self._transaction() as conn:
                outgoing = self.results.record(conn, result)
            self.faults.hit("results.after_commit")
            self.relay.publish(outgoing)
            return
        self.results_together.submit(result.run_id, result)

    def _record_results(self, entries: Sequence[Entry[StepResult]]) -> list[BaseException | None]:
        return self._together(entries, lambda conn, result: self.results.record(conn, result, advance=True),
                              "results.after_commit")

    def _together(self, entries: Sequence[Entry[Any]], apply: Callable[[Connection, Any], list[Outgoing]],
                  fault: str) -> list[BaseException | None]:
        """Apply the entries (of one run) in one transaction, each in its submitter's context (its
        trace span), and publish what they queued once it has committed. If one of them is rejected,
        each entry is applied again in a transaction of its own, so each message meets its own error
        (what ran in the rolled-back attempt left no row; its log lines are written again). Any other
        failure (the database, the broker) is every entry's, and every message is retried."""
        self.metrics.run_batch(len(entries))
        return self._commit(entries, apply, fault)

    def _commit(self, entries: Sequence[Entry[Any]], apply: Callable[[Connection, Any], list[Outgoing]],
                fault: str) -> list[BaseException | None]:
        try:
            with self._transaction() as conn:
                outgoing = [sent for entry in entries for sent in entry.context.run(apply, conn, entry.item)]
        except MessageRejected as exc:  # one message's own fault: the others are applied without it
            if len(entries) == 1:
                return [exc]
            return [self._commit([entry], apply, fault)[0] for entry in entries]
        except Exception as exc:  # noqa: BLE001 - the database or broker: every message retries
            return [exc] * len(entries)
        self.faults.hit(fault)
        try:
            self.relay.publish(outgoing)
        except Exception as exc:  # noqa: BLE001 - committed: the messages redeliver, the outbox resends
            return [exc] * len(entries)
        return [None] * len(entries)

    def record_dead_letter(self, payload: dict[str, Any]) -> None:
        report = DeadLetterReport.from_payload(payload)
        with self._transaction() as conn:
            self.results.record_dead_letter(conn, report)
        self.metrics.dead_letter(report.code)

    def worker_heartbeat(self, payload: dict[str, Any]) -> None:
        """An executor's heartbeat (processes with a database write theirs themselves)."""
        beat = WorkerHeartbeat.from_payload(payload)
        with self._transaction() as conn:
            wrepo.record_heartbeat(conn, row_of(beat, self.coordinator.names.namespace, utcnow()))
