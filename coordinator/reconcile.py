"""Repairs for what lost messages leave behind, and workflow deadlines.

Each repair runs in its own transaction, fenced exactly as the message it replaces, so that a
coordinator racing the real message (or another coordinator) changes nothing twice:

- an attempt recorded whose run never advanced (its step_finished was dead-lettered after an
  outage longer than the retries): the run is advanced now;
- a queued attempt past its result deadline with no result (its step message or result was
  lost): recorded as a lost attempt, then retried or failed by the step's policy;
- a running run past its workflow timeout: failed;
- queued runs of a workflow with concurrency limits while it has room (room every run's end
  looks for at once; this finds room that opened otherwise, like a deploy raising a limit).
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection

from miniflow.persistence import AttemptRow
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import StepLost
from miniflow.protocol.messages import StepFinished
from miniflow.protocol.states import RunStatus, StepStatus

from .concurrency import admit_queued
from .outbox import Outbox, Outgoing
from .pools import admit_waiting
from .runs import Coordinator

logger = logging.getLogger("miniflow.coordinator")


class Reconciler:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def unadvanced(self, conn: Connection, run_id: str, step: str, attempt: int) -> list[Outgoing] | None:
        """Advance a run past an attempt that was recorded but whose step_finished never arrived;
        None when there is nothing to do any more (another coordinator, or the message itself, got
        there first)."""
        run, row = repo.lock_run_with_step(conn, run_id, step)
        if run is None or run.status != RunStatus.RUNNING or row is None or row.status != StepStatus.QUEUED \
                or row.attempt != attempt:
            return None
        recorded = repo.get_attempt(conn, run_id, step, attempt)
        if recorded is None:
            return None
        logger.warning("run %s step %s attempt %d was recorded but the run never advanced: advancing it now",
                       run_id, step, attempt)
        return self.coordinator.advance(conn, run, row, recorded)

    def overdue(self, conn: Connection, run_id: str, step: str, attempt: int) -> list[Outgoing] | None:
        """Record a queued attempt whose result is overdue as lost (failed), then advance the run:
        the step is retried under its policy or the run fails with the reason. A real result
        arriving later is a duplicate of this attempt and is fenced. None when there is nothing
        to do any more."""
        coordinator = self.coordinator
        run, row = repo.lock_run_with_step(conn, run_id, step)
        if run is None or run.status != RunStatus.RUNNING:
            return None
        now = coordinator.clock()
        if row is None or row.status != StepStatus.QUEUED or row.attempt != attempt or row.result_due_at is None \
                or row.result_due_at > now:
            return None
        workflow = coordinator.catalog.workflow(conn, run.workflow, run.version)
        try:
            timeout = workflow.spec(step).timeout if workflow else None
        except KeyError:  # a step a later definition does not have
            timeout = None
        error = (f"no result for attempt {attempt} within its timeout of {timeout or 0:g}s plus "
                 f"{coordinator.result_grace_s:g}s: the step message or its result was lost (an executor gone for "
                 "good, or an outage longer than the retries)")
        lost = AttemptRow(run_id=run_id, step=step, attempt=attempt, ok=False, started_at=row.queued_at or now,
                          finished_at=now, duration_ms=0.0, recorded_at=now, error=error,
                          error_type=StepLost.error_type)
        if not repo.insert_attempt(conn, lost):
            return None  # its result came in meanwhile
        logger.warning("run %s step %s attempt %d recorded as lost: no result past its deadline", run_id, step, attempt)
        return coordinator.step_finished(conn, StepFinished(run_id, step, attempt))

    def expire_overdue(self, conn: Connection, limit: int = 100) -> list[str]:
        """Fail running runs past their workflow timeout, in this one transaction; returns their ids
        (the reconciler's loop gives each its own transaction: an end takes its workflow's gate)."""
        now = self.coordinator.clock()
        return [run_id for run_id in repo.overdue_run_ids(conn, now, limit) if self.expire(conn, run_id)]

    def expire(self, conn: Connection, run_id: str) -> bool:
        """Fail one running run if it is past its workflow timeout; whether it was."""
        coordinator = self.coordinator
        now = coordinator.clock()
        run = repo.lock_run(conn, run_id)
        if run is None or run.status != RunStatus.RUNNING or run.deadline_at is None or run.deadline_at > now:
            return False
        workflow = coordinator.catalog.workflow(conn, run.workflow, run.version)
        bound = f" of {workflow.timeout:g}s" if workflow and workflow.timeout else ""
        coordinator.end_run(conn, run, RunStatus.FAILED, f"workflow timeout{bound}: the run did not finish in time")
        return True

    def admit_queued(self, conn: Connection, workflow: str) -> list[Outgoing]:
        """Begin the queued runs of ``workflow`` that have room now."""
        coordinator = self.coordinator
        outbox = Outbox(conn, coordinator.clock(), coordinator.instrument)
        admitted = admit_queued(conn, coordinator.catalog, workflow, outbox.now,
                                lambda run, version: coordinator.begin(conn, outbox, run, version))
        if admitted:
            logger.info("began %d queued run(s) of %s that had room", len(admitted), workflow)
        return outbox.flush()

    def admit_pool(self, conn: Connection, pool: str) -> list[Outgoing]:
        """Dispatch the steps waiting for a slot of ``pool`` that have one now."""
        coordinator = self.coordinator
        outbox = Outbox(conn, coordinator.clock(), coordinator.instrument)
        went = admit_waiting(coordinator, conn, pool, outbox)
        if went:
            logger.info("dispatched %d step(s) that waited for a slot of pool %s", went, pool)
        return outbox.flush()
