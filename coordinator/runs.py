"""The coordinator: given a transaction and an event, record the change of a run and queue the
messages it implies in the outbox (same transaction). The caller publishes them after commit.

The coordinator is the only writer of run and step state. It applies the rules of the pure
``state`` module reading no step of the run but the attempt's own (the counters of
``repository.counters`` say what is ready and when the run is done; ``completion`` what follows).
Recording results is the results service's job (``results``), repairing what lost messages left
behind the reconciler's (``reconcile``).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection

from miniflow.persistence import AttemptRow, RunRow, StepRow, after_commit
from miniflow.persistence import repository as repo
from miniflow.persistence.offload import Offload
from miniflow.persistence.sealing import KeyRing, open_params
from miniflow.protocol.auth import Capabilities
from miniflow.protocol.clock import Clock, utcnow
from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import MessageRejected
from miniflow.protocol.messages import CancelRun, RetryRun, StartWorkflow, StepFinished, StepProgress
from miniflow.protocol.names import QueueNames
from miniflow.protocol.states import RUN_TERMINAL, RunStatus, StepStatus

from . import cache, mapping, pools, requests
from .catalog import Catalog
from .completion import Settle, Settled, recount
from .concurrency import admit_queued, may_begin, run_key
from .dispatching import Undispatchable, prepare
from .instrument import Instrument
from .outbox import Outbox, Outgoing
from .params import resolve_params, sealed
from .state import Decision, decide_failure, ready_steps
from .workflow import Workflow

logger = logging.getLogger("miniflow.coordinator")
# A queued attempt of a step with a timeout whose result has not come this long after the timeout
# is recorded as lost (failed) by the reconciler, so the run goes on instead of waiting for ever.
# Counted from the dispatch, so it also covers the time the message waits in the queue: an hour,
# like the infrastructure retries, so that only a real loss (not a backlog) trips it.
RESULT_GRACE_S = 3600.0


@dataclass(frozen=True)
class StartOutcome:
    run_id: str
    created: bool
    outgoing: list[Outgoing]
    queued: bool = False  # created, but waiting for room under its workflow's concurrency limits


class Coordinator:
    """Start, advance, cancel, retry and finish runs. Thread-safe; its catalog caches definitions."""

    def __init__(self, names: QueueNames, *, clock: Clock = utcnow, rng: random.Random | None = None,
                 instrument: Instrument | None = None, result_grace_s: float = RESULT_GRACE_S,
                 catalog: Catalog | None = None, keys: KeyRing | None = None,
                 caps: Capabilities | None = None) -> None:
        self.names = names
        self.clock = clock
        self.result_grace_s = result_grace_s
        self.rng = rng or random.Random()
        self.instrument = instrument or Instrument()
        self.catalog = catalog or Catalog()
        self.keys = keys  # seals secret params at rest (None: a start that gives some is rejected)
        self.caps = caps  # issues each dispatched attempt's capability (None: message authentication off)
        # publishes committed outbox messages at once (the node's relay; without it the sweeper does)
        self.publish: Callable[[list[Outgoing]], None] | None = None
        self.offload: Offload | None = None  # the artifact store (map steps over stored lists, large results)
        # admits the steps waiting for slots of some pools in a transaction after this one (the node's)
        self.admit_later: Callable[[list[str]], None] | None = None

    # -- start ------------------------------------------------------------------------------------
    def start(self, conn: Connection, start: StartWorkflow, message_id: str,
              trace_id: str | None = None) -> StartOutcome:
        """Create the run (once per idempotency key) and dispatch its root steps.

        The run row's unique idempotency key is the dedupe (INSERT ... ON CONFLICT DO NOTHING);
        the steps are inserted with the roots already queued: five statements in all."""
        key = start.idempotency_key or f"message:{message_id}"
        try:
            workflow = self.catalog.to_start(conn, start.workflow, start.version)
            resolved = resolve_params(workflow, start.params)
            concurrency_key = run_key(workflow, resolved)
            params = sealed(workflow, resolved, self.keys)
        except MessageRejected:
            # A re-sent start whose run exists is a duplicate, even if a later deploy would reject it.
            existing = repo.run_id_for_key(conn, key)
            if existing is not None:
                return StartOutcome(existing, False, [])
            raise
        now = self.clock()
        assert workflow.version is not None  # the catalog's workflows are stored versions
        limited = workflow.concurrency is not None  # queued, then begun if there is room
        run = RunRow(id=str(uuid.uuid4()), workflow=workflow.name, version=workflow.version,
                     status=RunStatus.QUEUED if limited else RunStatus.RUNNING, params=params, idempotency_key=key,
                     priority=start.priority, created_at=now, trace_id=trace_id, started_at=None if limited else now,
                     deadline_at=now + timedelta(seconds=workflow.timeout) if workflow.timeout and not limited
                     else None, open_ends=len(workflow.ends), concurrency_key=concurrency_key)
        if not repo.insert_run(conn, run):  # this key has a run already (a duplicate, or a concurrent start won)
            return StartOutcome(repo.run_id_for_key(conn, key) or run.id, False, [])
        outbox = Outbox(conn, now, self.instrument)
        slotted = workflow.pooled and bool(repo.pool_limits(conn, pools.pools_of(workflow)))
        if limited or workflow.conditional_roots or workflow.cached or slotted:  # all pending: roots judged first
            repo.insert_steps(conn, [StepRow(run.id, name, StepStatus.PENDING, waiting=len(spec.needs))
                                     for name, spec in workflow.steps.items()])
            began = not limited or may_begin(conn, workflow, concurrency_key, now)
            if began:
                self.begin(conn, outbox, run, workflow)
            return StartOutcome(run.id, True, outbox.flush(), queued=not began)
        plan = prepare(self, outbox, run, workflow, [(step, 1) for step in workflow.roots()], {}, None, {})
        queued = {} if isinstance(plan, Undispatchable) else \
            {name: (attempt, due) for (attempt, due), names in plan.items() for name in names}
        repo.insert_steps(conn, [
            StepRow(run.id, name, StepStatus.QUEUED, attempt=queued[name][0], queued_at=now,
                    result_due_at=queued[name][1], waiting=0) if name in queued
            else StepRow(run.id, name, StepStatus.PENDING, waiting=len(spec.needs))
            for name, spec in workflow.steps.items()])
        if isinstance(plan, Undispatchable):
            self._fail_undispatchable(conn, run, plan)
        return StartOutcome(run.id, True, outbox.flush())

    # -- dispatch ---------------------------------------------------------------------------------
    def dispatch(self, conn: Connection, outbox: Outbox, run: RunRow, workflow: Workflow,
                 attempts: Sequence[tuple[str, int]], outputs: dict[str, Any], delay_s: float | None,
                 items: mapping.Items | None = None, *, slotted: bool = False) -> bool:
        """Queue an attempt of each (step, attempt); False (and the run failed, none of them queued)
        when a message cannot be sent. Steps that share an attempt number and deadline are marked
        queued in one statement. In a workflow with a result cache, first attempts are looked up
        first (``cache.serve``): hits are recorded as succeeded, and what they make ready follows.
        Map steps are spread over their elements (``mapping.spread``; ``items``: the elements of
        instances to send); steps of pools with slots wait for one (``pools.admit``; ``slotted``:
        they have theirs)."""
        items = dict(items or {})
        for stage in (cache.serve if workflow.cached else None, mapping.spread if workflow.mapped else None):
            if delay_s is not None or stage is None or slotted:  # a step admitted from a line went through them
                continue
            served = stage(self, conn, run, workflow, attempts, outputs, outbox)
            run = getattr(served, "run", None) or run  # a map step that failed set the run's error
            if served.ended is not None:
                self.go_on(conn, outbox, run, workflow, served.ended)
                return served.ended.failure is None
            attempts, outputs = served.attempts, served.outputs
            items.update(getattr(served, "items", {}))
        behind: list[str] = []  # pools with a line the new steps joined
        if delay_s is None and workflow.pooled and not slotted:  # a retry keeps the slot its step holds
            attempts, behind = pools.admit(conn, run, workflow, attempts, outbox)
        plan = prepare(self, outbox, run, workflow, attempts, outputs, delay_s, items)
        if isinstance(plan, Undispatchable):
            self._fail_undispatchable(conn, run, plan)
            return False
        for (attempt, due), names in plan.items():
            repo.update_steps(conn, run.id, names, status=StepStatus.QUEUED, attempt=attempt, queued_at=outbox.now,
                              error=None, result_due_at=due, running_attempt=None, note=None)
        if behind:  # their free slots go to the first in line, once what went is counted
            pools.give_back(self, conn, behind)
        return True

    def _fail_undispatchable(self, conn: Connection, run: RunRow, failure: Undispatchable) -> None:
        repo.update_step(conn, run.id, failure.step, status=StepStatus.FAILED, error=failure.reason)
        self.end_run(conn, run, RunStatus.FAILED, failure.reason)

    # -- advance ----------------------------------------------------------------------------------
    def step_finished(self, conn: Connection, event: StepFinished) -> list[Outgoing]:
        """Advance the run after a recorded attempt; stale or duplicate events are fenced."""
        run, row = repo.lock_run_with_step(conn, event.run_id, event.step)
        if run is None:
            raise MessageRejected(Reason.UNKNOWN_RUN, f"run {event.run_id!r} does not exist", "run_id")
        attempt = repo.get_attempt(conn, event.run_id, event.step, event.attempt)
        if attempt is None:
            raise MessageRejected(Reason.UNKNOWN_STEP, f"run {event.run_id} has no recorded attempt "
                                  f"{event.attempt} of step {event.step!r}", "step")
        return self.advance(conn, run, row, attempt)

    def advance(self, conn: Connection, run: RunRow, row: StepRow | None, attempt: AttemptRow) -> list[Outgoing]:
        """Apply a recorded attempt to its run (locked by the caller; ``row``: the attempt's step,
        read under the lock). Reads no other step of the run (see ``repository.counters``)."""
        if row is None:
            raise MessageRejected(Reason.UNKNOWN_STEP, f"run {run.id} has no step {attempt.step!r}", "step")
        if run.status in RUN_TERMINAL:
            logger.info("late result of run %s step %s attempt %d ignored: run is %s",
                        run.id, attempt.step, attempt.attempt, run.status)
            return []
        if row.status != StepStatus.QUEUED or row.attempt != attempt.attempt:
            logger.info("stale result fenced: run %s step %s attempt %d (step is %s at attempt %d)",
                        run.id, attempt.step, attempt.attempt, row.status, row.attempt)
            return []
        workflow = self.catalog.workflow(conn, run.workflow, run.version)
        if workflow is None:  # pragma: no cover - definitions are never deleted
            raise MessageRejected(Reason.UNKNOWN_WORKFLOW, f"workflow {run.workflow!r} vanished", "workflow")
        if attempt.step in workflow.steps and workflow.steps[attempt.step].map is not None:  # forged
            raise MessageRejected(Reason.UNKNOWN_STEP, f"step {attempt.step!r} of run {run.id} is a map step: its "
                                  "elements have results, it has none", "step")
        if run.open_ends is None:  # a run from before the counters: count it once
            recount(conn, run.id, workflow)
        with repo.batched_writes(conn):  # its writes in one round trip on Postgres
            if attempt.step not in workflow.steps:  # an instance of a map step
                sent = mapping.element_result(self, conn, run, workflow, row, attempt)
            elif attempt.ok:
                cache.store(conn, run, workflow, attempt, row.cache_key, self.clock())
                sent = self._succeeded(conn, run, workflow, attempt)
            else:  # attempts count from the step's current budget (a run retry starts a new one)
                used = attempt.attempt - (row.first_attempt or 1) + 1
                sent = self._failed(conn, run, workflow, attempt, decide_failure(workflow, attempt.step, used,
                                                                                  attempt.error, self.rng))
        if row.pool:  # a step of a pool with slots that has ended gives its slot to a step waiting for one
            pools.give_back(self, conn, [row.pool])
        return sent

    def _succeeded(self, conn: Connection, run: RunRow, workflow: Workflow, attempt: AttemptRow) -> list[Outgoing]:
        outbox = Outbox(conn, self.clock(), self.instrument)
        repo.update_step(conn, run.id, attempt.step, status=StepStatus.SUCCEEDED, output=attempt.output,
                         error=attempt.error, node=attempt.node, started_at=attempt.started_at,
                         finished_at=attempt.finished_at, result_due_at=None)
        settled = Settle(conn, run.id, workflow, lambda: open_params(run.params, self.keys))(
            succeeded=(attempt.step, attempt.output))
        self.go_on(conn, outbox, run, workflow, settled)
        return outbox.flush()

    def begin(self, conn: Connection, outbox: Outbox, run: RunRow, workflow: Workflow) -> None:
        """A run begins (again): a queued one admitted to a slot, a new one whose roots have
        conditions, a retried one. It is running from now (its deadline counts from now); its steps
        whose needs have all succeeded are judged, and dispatched at their next attempt."""
        fresh = run.started_at is None or run.status == RunStatus.RUNNING  # nothing of it has run yet
        began = self.clock() if run.started_at is None else run.started_at  # read after the gate, if any
        repo.update_run(conn, run.id, status=RunStatus.RUNNING, error=None, finished_at=None, started_at=began,
                        deadline_at=self.clock() + timedelta(seconds=workflow.timeout) if workflow.timeout else None)
        run = dataclasses.replace(run, status=RunStatus.RUNNING, error=None)
        settle = Settle(conn, run.id, workflow, lambda: open_params(run.params, self.keys))
        if fresh:
            self.go_on(conn, outbox, run, workflow, settle(candidates=workflow.roots()))
            return
        steps = repo.get_steps(conn, run.id)
        settle.settled.outputs.update({name: r.output for name, r in steps.items()})
        settled = settle(candidates=ready_steps(workflow, {name: r.status for name, r in steps.items()}))
        if settled.failure is not None or settled.run_ended:
            self.go_on(conn, outbox, run, workflow, settled)
        else:  # a step that ran before goes on counting its attempts
            self.dispatch(conn, outbox, run, workflow, [(step, steps[step].attempt + 1) for step in settled.ready],
                           settled.outputs, None)

    def _release(self, conn: Connection, run: RunRow, outbox: Outbox | None) -> None:
        """A run has ended: if it held a slot of its workflow's limits, begin the queued runs that now
        have room, in this transaction (their messages go into ``outbox``, or are published after
        the commit when there is none)."""
        workflow = self.catalog.workflow(conn, run.workflow, run.version)
        if run.status != RunStatus.RUNNING or workflow is None or workflow.concurrency is None:
            return
        box = outbox or Outbox(conn, self.clock(), self.instrument)
        admit_queued(conn, self.catalog, run.workflow, box.now, lambda queued, version: self.begin(
            conn, box, queued, version))
        publish = self.publish
        if outbox is None and box.items:
            sent = box.flush()
            if publish is not None:
                after_commit(conn, lambda: publish(sent))

    def go_on(self, conn: Connection, outbox: Outbox, run: RunRow, workflow: Workflow, settled: Settled) -> None:
        """Dispatch what ``settled`` made ready (a step made ready by its needs has never been
        dispatched, so at attempt 1, but with trigger rules), or end the run as it says: failed if a
        step of it failed (``run.error``, a workflow with trigger rules), else succeeded."""
        if settled.failure is not None:
            self._fail_undispatchable(conn, run, Undispatchable(*settled.failure))
        elif settled.run_ended:
            error = run.error
            status = RunStatus.FAILED if error else RunStatus.SUCCEEDED
            repo.update_run(conn, run.id, status=status, error=error, finished_at=outbox.now)
            self._finished(conn, run.id, workflow.name, status, error)
            self._release(conn, run, outbox)
        elif workflow.tolerates_failure:  # a retried run may judge again a step that ran after a failure
            attempts = repo.next_attempts(conn, run.id, settled.ready)
            self.dispatch(conn, outbox, run, workflow, [(d, attempts.get(d, 1)) for d in settled.ready],
                           settled.outputs, None)
        else:
            self.dispatch(conn, outbox, run, workflow, [(d, 1) for d in settled.ready], settled.outputs, None)

    def _failed(self, conn: Connection, run: RunRow, workflow: Workflow, attempt: AttemptRow,
                decision: Decision) -> list[Outgoing]:
        outbox = Outbox(conn, self.clock(), self.instrument)
        if decision.retry_delay is not None:
            repo.update_step(conn, run.id, attempt.step, error=attempt.error, node=attempt.node)
            needs = repo.get_needs(conn, run.id, workflow.steps[attempt.step].needs)
            outputs = {name: output for name, (_, output) in needs.items()}
            self.dispatch(conn, outbox, run, workflow, [(attempt.step, attempt.attempt + 1)], outputs,
                           decision.retry_delay)
            return outbox.flush()
        repo.update_step(conn, run.id, attempt.step, status=StepStatus.FAILED, error=attempt.error,
                         node=attempt.node, started_at=attempt.started_at, finished_at=attempt.finished_at,
                         result_due_at=None)
        reason = decision.run_error or f"step {attempt.step!r} failed"
        self.step_failed(conn, outbox, run, workflow, attempt.step, reason)
        return outbox.flush()

    def step_failed(self, conn: Connection, outbox: Outbox, run: RunRow, workflow: Workflow, step: str,
                    reason: str) -> None:
        """A step has failed for good (its row says so): the run fails now, or, in a workflow with
        trigger rules, the steps that run after failures run and the run fails when all have ended."""
        if workflow.tolerates_failure:
            if run.error is None:  # the first failure is the run's error (shown while it goes on)
                repo.update_run(conn, run.id, error=reason)
                run = dataclasses.replace(run, error=reason)
            settled = Settle(conn, run.id, workflow, lambda: open_params(run.params, self.keys))(failed=step)
            self.go_on(conn, outbox, run, workflow, settled)
            return
        # Steps still out on other branches are cancelled: their late results are recorded as
        # attempts but change nothing.
        self.end_run(conn, run, RunStatus.FAILED, reason, outbox)

    def _finished(self, conn: Connection, run_id: str, workflow: str, status: str, error: str | None) -> None:
        """Mark the run's end for the instrument once the transaction that ends it has committed."""
        after_commit(conn, lambda: self.instrument.run_finished(run_id, workflow, status, error))

    def progress(self, conn: Connection, event: StepProgress) -> bool:
        """Show an executor's progress on a queued attempt (``requests.progress``)."""
        return requests.progress(self, conn, event)

    # -- end early: cancel, timeouts ---------------------------------------------------------------
    def end_run(self, conn: Connection, run: RunRow, status: RunStatus, reason: str,
                outbox: Outbox | None = None) -> None:
        """End a run early: pending steps are skipped, queued ones cancelled (their late results
        are recorded as attempts and change nothing)."""
        repo.update_steps_in_status(conn, run.id, StepStatus.PENDING, status=StepStatus.SKIPPED)
        repo.update_steps_in_status(conn, run.id, StepStatus.QUEUED, status=StepStatus.CANCELLED, result_due_at=None)
        repo.update_run(conn, run.id, status=status, error=reason, finished_at=self.clock())
        self._finished(conn, run.id, run.workflow, status, reason)
        self._release(conn, run, outbox)
        workflow = self.catalog.workflow(conn, run.workflow, run.version)
        limited = repo.pool_limits(conn, pools.pools_of(workflow)) if workflow is not None and workflow.pooled else {}
        if limited:  # the slots its steps held
            pools.give_back(self, conn, sorted(limited))

    def cancel(self, conn: Connection, request: CancelRun) -> bool:
        """Cancel a run that has not ended; False when it had already ended (``requests.cancel``)."""
        return requests.cancel(self, conn, request)

    def retry(self, conn: Connection, request: RetryRun, message_id: str = "") -> list[Outgoing] | None:
        """Re-run a failed or cancelled run (``requests.retry``); None when there is nothing to do."""
        return requests.retry(self, conn, request, message_id)
