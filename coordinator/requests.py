"""Requests of a run that the coordinator acts on: an operator's cancel and retry, an executor's
progress.

Cancel and retry lock the run first. A cancel ends a run that has not ended (a queued one too); a retry
re-opens a failed or cancelled run (``completion.reopen``) and begins it again, or queues it when
its workflow's concurrency limits have no room for it now.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from miniflow.persistence import repository as repo
from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import MessageRejected
from miniflow.protocol.messages import CancelRun, RetryRun, StepProgress
from miniflow.protocol.states import RETRYABLE, RUN_TERMINAL, RunStatus

from .completion import reopen
from .concurrency import may_begin
from .outbox import Outbox, Outgoing

if TYPE_CHECKING:  # the coordinator calls these with itself
    from .runs import Coordinator

logger = logging.getLogger("miniflow.coordinator")
PROGRESS_RUNNING = "running"


def progress(coordinator: Coordinator, conn: Connection, event: StepProgress) -> bool:
    """Show an executor's progress on a queued attempt: running (and where), or handed back by a
    node without its task (the note says why the step waits). A stale event changes nothing."""
    if event.state == PROGRESS_RUNNING:
        return repo.mark_queued_attempt(conn, event.run_id, event.step, event.attempt,
                                        running_attempt=event.attempt, node=event.node or None,
                                        started_at=coordinator.clock(), note=None)
    return repo.mark_queued_attempt(conn, event.run_id, event.step, event.attempt, note=event.detail[:2000])


def cancel(coordinator: Coordinator, conn: Connection, request: CancelRun) -> bool:
    """Cancel a run that has not ended; False when it had already ended."""
    run = repo.lock_run(conn, request.run_id)
    if run is None:
        raise MessageRejected(Reason.UNKNOWN_RUN, f"run {request.run_id!r} does not exist", "run_id")
    if run.status in RUN_TERMINAL:
        return False
    coordinator.end_run(conn, run, RunStatus.CANCELLED,
                        "cancelled" + (f": {request.reason}" if request.reason else ""))
    return True


def retry(coordinator: Coordinator, conn: Connection, request: RetryRun, message_id: str = "") -> list[Outgoing] | None:
    """Re-run a failed or cancelled run from its unfinished steps (``reopen``); succeeded outputs
    are kept. Returns None (and logs why) when the run is not failed or cancelled, or when this
    request message (``message_id``) was already acted on: a redelivered retry must not re-run a
    run whose re-run has failed again."""
    run = repo.lock_run(conn, request.run_id)
    if run is None:
        raise MessageRejected(Reason.UNKNOWN_RUN, f"run {request.run_id!r} does not exist", "run_id")
    if run.status not in RETRYABLE:
        logger.info("retry of run %s ignored: it is %s, not failed or cancelled", request.run_id, run.status)
        return None
    now = coordinator.clock()
    if message_id and not repo.mark_handled(conn, message_id, RetryRun.KIND, request.run_id, now):
        logger.info("retry of run %s ignored: request %s was already handled (a redelivery)",
                    request.run_id, message_id)
        return None
    workflow = coordinator.catalog.workflow(conn, run.workflow, run.version)
    if workflow is None:  # pragma: no cover - definitions are never deleted
        raise MessageRejected(Reason.UNKNOWN_WORKFLOW, f"workflow {run.workflow!r} vanished", "workflow")
    reopen(conn, request.run_id, workflow)  # queued: not counted as running while its room is decided
    outbox = Outbox(conn, now, coordinator.instrument)
    if workflow.concurrency is not None and not may_begin(conn, workflow, run.concurrency_key, now):
        logger.info("run %s retried: queued for a slot of %s", run.id, workflow.name)
        return outbox.flush()
    coordinator.begin(conn, outbox, run, workflow)
    return outbox.flush()
