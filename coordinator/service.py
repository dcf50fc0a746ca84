"""The coordinating services: given a transaction and an event, record the change and queue the
messages it implies in the outbox (same transaction). The caller publishes them after commit.

The coordinator is the only writer of run and step state. The results service only records
attempts (unique per run, step, attempt) and tells the coordinator.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from persistence import repository as repo
from persistence.db import after_commit
from protocol import codec
from protocol.errors import MessageRejected
from protocol.messages import (
    INVALID_PARAMS,
    UNKNOWN_VERSION,
    UNKNOWN_WORKFLOW,
    CancelRun,
    DeadLetterReport,
    RetryRun,
    StartWorkflow,
    StepFinished,
    StepResult,
    StepTask,
    envelope,
)
from protocol.names import EXECUTE_STEP, STEP_FINISHED, QueueNames

from .definitions import Workflow
from .state import (
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_RUNNING,
    RUN_TERMINAL,
    STEP_CANCELLED,
    STEP_FAILED,
    STEP_PENDING,
    STEP_QUEUED,
    STEP_SKIPPED,
    Decision,
    decide,
    ready_steps,
)

logger = logging.getLogger("miniflow.coordinator")
Clock = Callable[[], datetime]
# A queued attempt of a step with a timeout whose result has not come this long after the timeout
# is recorded as lost (failed) by the reconciler, so the run goes on instead of waiting for ever.
# Counted from the dispatch, so it also covers the time the message waits in the queue: an hour,
# like the infrastructure retries, so that only a real loss (not a backlog) trips it.
RESULT_GRACE_S = 3600.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outgoing:
    """A message committed to the outbox, to publish once the transaction has committed."""

    message_id: str
    queue_name: str
    body: bytes
    delay_ms: int | None = None
    envelope: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # in-memory copy of body


@dataclass(frozen=True)
class StartOutcome:
    run_id: str
    created: bool
    outgoing: list[Outgoing]


class MessageTooLarge(Exception):
    """A message the coordinator wants to send is over the wire limit."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


class Instrument:
    """Hooks the coordinator calls at its decisions; the default does nothing.

    The actors layer plugs tracing in here: ``outgoing`` returns message options (trace context
    of a span for the send) and ``run_finished`` marks the end of a run.
    """

    def outgoing(self, actor_name: str, queue_name: str, attributes: dict[str, Any]) -> dict[str, Any]:
        return {}

    def run_finished(self, run_id: str, workflow: str, status: str, error: str | None) -> None:
        return None


class Outbox:
    """Collects the messages of one transaction and writes them to the outbox table."""

    def __init__(self, conn: Connection, now: datetime, instrument: Instrument | None = None) -> None:
        self.conn = conn
        self.now = now
        self.instrument = instrument or Instrument()
        self.items: list[Outgoing] = []

    def add(self, queue_name: str, actor_name: str, payload: dict[str, Any], *,
            options: dict[str, Any] | None = None, delay_ms: int | None = None,
            attributes: dict[str, Any] | None = None) -> None:
        options = dict(options or {})
        options.update(self.instrument.outgoing(actor_name, queue_name, attributes or {}))
        body = envelope(queue_name, actor_name, payload, options=options)
        packed = codec.pack(body)
        if len(packed) > codec.MAX_MESSAGE_BYTES:
            raise MessageTooLarge(len(packed))
        self.items.append(Outgoing(body["message_id"], queue_name, packed, delay_ms, body))

    def flush(self) -> list[Outgoing]:
        repo.add_outbox(self.conn, [
            {"message_id": o.message_id, "queue_name": o.queue_name, "body": o.body,
             "delay_ms": o.delay_ms, "created_at": self.now} for o in self.items])
        return self.items


class _Undispatchable(Exception):
    """A step message that cannot be sent (over the size limit): the run fails with the reason."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step, self.reason = step, reason


class Coordinator:
    """Start, advance, cancel and finish runs. Thread-safe; holds a cache of immutable definitions."""

    def __init__(self, names: QueueNames, *, clock: Clock = _utcnow, rng: random.Random | None = None,
                 instrument: Instrument | None = None, result_grace_s: float = RESULT_GRACE_S) -> None:
        self.names = names
        self.clock = clock
        self.result_grace_s = result_grace_s
        self.rng = rng or random.Random()
        self.instrument = instrument or Instrument()
        self._definitions: dict[tuple[str, int], Workflow] = {}

    # -- definitions ------------------------------------------------------------------------------
    def deploy(self, conn: Connection, workflow: Workflow, source: str | None = None) -> tuple[int, bool]:
        return repo.save_definition(conn, workflow.name, workflow.to_spec(), source, workflow.version)

    def workflow(self, conn: Connection, name: str, version: int | None) -> Workflow | None:
        if version is None:  # the latest: one small query, then the cache of immutable versions
            version = repo.latest_version(conn, name)
            if version is None:
                return None
        if (name, version) in self._definitions:
            return self._definitions[(name, version)]
        found = repo.get_definition(conn, name, version)
        if found is None:
            return None
        resolved, spec = found
        workflow = self._definitions.get((name, resolved))
        if workflow is None:
            workflow = self._definitions[(name, resolved)] = Workflow.from_spec(spec, resolved)
        return workflow

    # -- start ------------------------------------------------------------------------------------
    def start(self, conn: Connection, start: StartWorkflow, message_id: str,
              trace_id: str | None = None) -> StartOutcome:
        """Create the run (once per idempotency key) and dispatch its root steps.

        The run row's unique idempotency key is the dedupe (INSERT ... ON CONFLICT DO NOTHING);
        the steps are inserted with the roots already queued: five statements in all."""
        key = start.idempotency_key or f"message:{message_id}"
        try:
            workflow = self.workflow(conn, start.workflow, start.version)
            if workflow is None:
                if start.version is not None and repo.get_definition(conn, start.workflow) is not None:
                    raise MessageRejected(UNKNOWN_VERSION, f"workflow {start.workflow!r} has no version "
                                          f"{start.version}", "version")
                raise MessageRejected(UNKNOWN_WORKFLOW, f"workflow {start.workflow!r} is not deployed", "workflow")
            params = resolve_params(workflow, start.params)
        except MessageRejected:
            # A re-sent start whose run exists is a duplicate, even if a later deploy would reject it.
            existing = repo.run_id_for_key(conn, key)
            if existing is not None:
                return StartOutcome(existing, False, [])
            raise
        now = self.clock()
        run_id = str(uuid.uuid4())
        created = repo.insert_run(conn, {
            "id": run_id, "workflow": workflow.name, "version": workflow.version, "status": RUN_RUNNING,
            "params": params, "idempotency_key": key, "priority": start.priority, "trace_id": trace_id,
            "created_at": now, "started_at": now,
            "deadline_at": now + timedelta(seconds=workflow.timeout) if workflow.timeout else None,
        })
        if not created:  # this key has a run already (a duplicate start, or a concurrent one won)
            return StartOutcome(repo.run_id_for_key(conn, key) or run_id, False, [])
        outbox = Outbox(conn, now, self.instrument)
        run = {"id": run_id, "workflow": workflow.name, "params": params, "priority": start.priority}
        failed: _Undispatchable | None = None
        try:
            groups = self._prepare(outbox, run, workflow, [(step, 1) for step in workflow.roots()], {}, None)
        except _Undispatchable as exc:
            groups, failed = {}, exc
        queued = {name: (attempt, due) for (attempt, due), names in groups.items() for name in names}
        repo.insert_steps(conn, [
            {"run_id": run_id, "step": name, "status": STEP_QUEUED, "attempt": queued[name][0], "queued_at": now,
             "result_due_at": queued[name][1]} if name in queued else
            {"run_id": run_id, "step": name, "status": STEP_PENDING, "attempt": 0, "queued_at": None,
             "result_due_at": None}
            for name in workflow.steps])
        if failed is not None:
            self._undispatchable(conn, run, failed)
        return StartOutcome(run_id, True, outbox.flush())

    def _dispatch(self, conn: Connection, outbox: Outbox, run: Any, workflow: Workflow,
                  attempts: list[tuple[str, int]], outputs: dict[str, Any], delay_s: float | None) -> bool:
        """Queue an attempt of each (step, attempt); False (and the run failed, none of them queued)
        when a message cannot be sent. Steps that share an attempt number and deadline are marked
        queued in one statement."""
        try:
            groups = self._prepare(outbox, run, workflow, attempts, outputs, delay_s)
        except _Undispatchable as exc:
            self._undispatchable(conn, run, exc)
            return False
        for (attempt, due), names in groups.items():
            repo.update_steps(conn, run["id"], names, status=STEP_QUEUED, attempt=attempt, queued_at=outbox.now,
                              error=None, result_due_at=due)
        return True

    def _prepare(self, outbox: Outbox, run: Any, workflow: Workflow, attempts: list[tuple[str, int]],
                 outputs: dict[str, Any], delay_s: float | None) -> dict[tuple[int, datetime | None], list[str]]:
        """Add the step messages to the outbox; returns the steps by (attempt, result deadline).
        Raises _Undispatchable (and adds none of them) when one is over the message limit."""
        mark = len(outbox.items)
        groups: dict[tuple[int, datetime | None], list[str]] = {}
        delay_ms = int(delay_s * 1000) if delay_s else None
        for step, attempt in attempts:
            spec = workflow.steps[step]
            task = StepTask(run_id=run["id"], workflow=workflow.name, step=step, attempt=attempt,
                            task=spec.task, params=run["params"], config=spec.config,
                            inputs={need: outputs.get(need) for need in spec.needs}, timeout_s=spec.timeout,
                            secret_params=workflow.secret_param_list)
            options: dict[str, Any] = {}
            if run["priority"]:
                options["broker_priority"] = run["priority"]
            if spec.timeout:
                options["time_limit"] = int(spec.timeout * 1000)
            try:
                outbox.add(self.names.step_queue(spec.queue), EXECUTE_STEP, task.to_payload(), options=options,
                           delay_ms=delay_ms, attributes={"run_id": run["id"], "workflow": workflow.name,
                                                          "step": step, "attempt": attempt, "delay_ms": delay_ms})
            except MessageTooLarge as exc:
                del outbox.items[mark:]
                raise _Undispatchable(step, (
                    f"step {step!r} cannot be dispatched: its params and the outputs of the steps it needs "
                    f"come to {exc.size} bytes, over the {codec.MAX_MESSAGE_BYTES}-byte message limit; "
                    "return references (paths, keys) instead of bulk data")) from None
            due = outbox.now + timedelta(seconds=(delay_s or 0) + spec.timeout + self.result_grace_s) \
                if spec.timeout else None
            groups.setdefault((attempt, due), []).append(step)
        return groups

    def _undispatchable(self, conn: Connection, run: Any, failure: _Undispatchable) -> None:
        repo.update_step(conn, run["id"], failure.step, status=STEP_FAILED, error=failure.reason)
        self._end_run(conn, run, RUN_FAILED, failure.reason)

    # -- results ----------------------------------------------------------------------------------
    def record_result(self, conn: Connection, result: StepResult, *, advance: bool = False) -> list[Outgoing]:
        """Record an attempt once; tell the coordinator only the first time.

        With ``advance`` (the coordinator runs in the same process) the run is advanced in this
        same transaction instead of through a step_finished message: one hop and one commit less
        per step, with the same fencing. The run row is locked first, so concurrent results of one
        run queue up instead of deadlocking on the attempt's foreign key."""
        started = datetime.fromtimestamp(result.started_at, UTC)
        finished = datetime.fromtimestamp(result.finished_at, UTC)
        now = self.clock()
        attempt = {
            "run_id": result.run_id, "step": result.step, "attempt": result.attempt, "ok": result.ok,
            "output": result.output, "error": result.error, "error_type": result.error_type,
            "node": result.node, "started_at": started, "finished_at": finished,
            "duration_ms": max(0.0, (result.finished_at - result.started_at) * 1000), "recorded_at": now,
        }
        if advance:  # lock, record and read in one round trip on Postgres
            run, steps, inserted = repo.record_and_lock(conn, attempt)
        else:
            run, steps = repo.get_run(conn, result.run_id), {}
            inserted = run is not None and repo.insert_attempt(conn, attempt)
        if run is None:
            raise MessageRejected("unknown_run", f"run {result.run_id!r} does not exist", "run_id")
        if not inserted:
            logger.info("duplicate result ignored: run %s step %s attempt %d (the first one recorded wins)",
                        result.run_id, result.step, result.attempt)
            return []
        event = StepFinished(result.run_id, result.step, result.attempt)
        if advance:
            return self._advance(conn, run, steps, event, attempt)
        outbox = Outbox(conn, now, self.instrument)
        outbox.add(self.names.coordinator, STEP_FINISHED, event.to_payload(),
                   attributes={"run_id": result.run_id, "step": result.step, "attempt": result.attempt})
        return outbox.flush()

    def record_dead_letter(self, conn: Connection, report: DeadLetterReport) -> None:
        repo.insert_dead_letter(conn, {
            "queue": report.queue[:255], "message_id": report.message_id, "actor": report.actor,
            "code": report.code[:64], "detail": report.detail[:2000], "raw": report.raw[:codec.RAW_KEEP],
            "node": report.node,
        })

    # -- advance ----------------------------------------------------------------------------------
    def step_finished(self, conn: Connection, event: StepFinished) -> list[Outgoing]:
        """Advance the run after a recorded attempt; stale or duplicate events are fenced."""
        run, steps = repo.lock_run_with_steps(conn, event.run_id)
        if run is None:
            raise MessageRejected("unknown_run", f"run {event.run_id!r} does not exist", "run_id")
        attempt = repo.get_attempt(conn, event.run_id, event.step, event.attempt)
        if attempt is None:
            raise MessageRejected("unknown_step", f"run {event.run_id} has no recorded attempt "
                                  f"{event.attempt} of step {event.step!r}", "step")
        return self._advance(conn, run, steps, event, attempt)

    def _advance(self, conn: Connection, run: Any, steps: dict[str, Any], event: StepFinished,
                 attempt: Any) -> list[Outgoing]:
        """Apply a recorded attempt to its run (locked by the caller, ``steps`` read under the lock)."""
        row = steps.get(event.step)
        if row is None:
            raise MessageRejected("unknown_step", f"run {event.run_id} has no step {event.step!r}", "step")
        if run["status"] in RUN_TERMINAL:
            logger.info("late result of run %s step %s attempt %d ignored: run is %s",
                        event.run_id, event.step, event.attempt, run["status"])
            return []
        if row["status"] != STEP_QUEUED or row["attempt"] != event.attempt:
            logger.info("stale result fenced: run %s step %s attempt %d (step is %s at attempt %d)",
                        event.run_id, event.step, event.attempt, row["status"], row["attempt"])
            return []
        workflow = self.workflow(conn, run["workflow"], run["version"])
        if workflow is None:  # pragma: no cover - definitions are never deleted
            raise MessageRejected(UNKNOWN_WORKFLOW, f"workflow {run['workflow']!r} vanished", "workflow")
        statuses = {name: r["status"] for name, r in steps.items()}
        # Attempts count from the step's current budget (a run retry starts a new one).
        used = event.attempt - (row["first_attempt"] or 1) + 1
        decision = decide(workflow, statuses, event.step, used, attempt["ok"], attempt["error"], self.rng)
        with repo.batched_writes(conn):  # its writes in one round trip on Postgres
            return self._apply(conn, run, workflow, steps, event, attempt, decision)

    def _apply(self, conn: Connection, run: Any, workflow: Workflow, steps: dict[str, Any],
               event: StepFinished, attempt: Any, decision: Decision) -> list[Outgoing]:
        now = self.clock()
        outbox = Outbox(conn, now, self.instrument)
        outputs = {name: r["output"] for name, r in steps.items()}
        if decision.retry_delay is not None:
            repo.update_step(conn, run["id"], event.step, error=attempt["error"], node=attempt["node"])
            self._dispatch(conn, outbox, run, workflow, [(event.step, event.attempt + 1)], outputs,
                           decision.retry_delay)
            return outbox.flush()
        repo.update_step(conn, run["id"], event.step, status=decision.step_status, output=attempt["output"],
                         error=attempt["error"], node=attempt["node"], started_at=attempt["started_at"],
                         finished_at=attempt["finished_at"], result_due_at=None)
        outputs[event.step] = attempt["output"]
        if not self._dispatch(conn, outbox, run, workflow, [(step, steps[step]["attempt"] + 1)
                                                             for step in decision.dispatch], outputs, None):
            return outbox.flush()
        repo.update_steps(conn, run["id"], decision.skip, status=STEP_SKIPPED)
        repo.update_steps(conn, run["id"], decision.cancel, status=STEP_CANCELLED, result_due_at=None)
        if decision.run_status:
            repo.update_run(conn, run["id"], status=decision.run_status, error=decision.run_error,
                            finished_at=now)
            self._finished(conn, run["id"], workflow.name, decision.run_status, decision.run_error)
        return outbox.flush()

    def _finished(self, conn: Connection, run_id: str, workflow: str, status: str, error: str | None) -> None:
        """Mark the run's end for the instrument once the transaction that ends it has committed."""
        after_commit(conn, lambda: self.instrument.run_finished(run_id, workflow, status, error))

    # -- cancel -----------------------------------------------------------------------------------
    def _end_run(self, conn: Connection, run: Any, status: str, reason: str) -> None:
        """End a run early: pending steps are skipped, queued ones cancelled (their late results
        are recorded as attempts and change nothing)."""
        steps = repo.get_steps(conn, run["id"])
        repo.update_steps(conn, run["id"], [s for s, r in steps.items() if r["status"] == STEP_PENDING],
                          status=STEP_SKIPPED)
        repo.update_steps(conn, run["id"], [s for s, r in steps.items() if r["status"] == STEP_QUEUED],
                          status=STEP_CANCELLED, result_due_at=None)
        repo.update_run(conn, run["id"], status=status, error=reason, finished_at=self.clock())
        self._finished(conn, run["id"], run["workflow"], status, reason)

    def cancel(self, conn: Connection, request: CancelRun) -> bool:
        """Cancel a run that has not ended; False when it had already ended."""
        run = repo.lock_run(conn, request.run_id)
        if run is None:
            raise MessageRejected("unknown_run", f"run {request.run_id!r} does not exist", "run_id")
        if run["status"] in RUN_TERMINAL:
            return False
        self._end_run(conn, run, RUN_CANCELLED, "cancelled" + (f": {request.reason}" if request.reason else ""))
        return True


    # -- retry ------------------------------------------------------------------------------------
    def retry(self, conn: Connection, request: RetryRun, message_id: str = "") -> list[Outgoing] | None:
        """Re-run a failed or cancelled run from its unfinished steps; succeeded outputs are kept.

        Each re-run step gets a fresh retry budget; attempt numbers keep counting up, so every
        attempt stays unique. Returns None (and logs why) when the run is not failed or cancelled,
        or when this request message (``message_id``) was already acted on: a redelivered retry
        must not re-run a run whose re-run has failed again."""
        run = repo.lock_run(conn, request.run_id)
        if run is None:
            raise MessageRejected("unknown_run", f"run {request.run_id!r} does not exist", "run_id")
        if run["status"] not in (RUN_FAILED, RUN_CANCELLED):
            logger.info("retry of run %s ignored: it is %s, not failed or cancelled", request.run_id, run["status"])
            return None
        now = self.clock()
        if message_id and not repo.mark_handled(conn, message_id, RetryRun.KIND, request.run_id, now):
            logger.info("retry of run %s ignored: request %s was already handled (a redelivery)",
                        request.run_id, message_id)
            return None
        workflow = self.workflow(conn, run["workflow"], run["version"])
        if workflow is None:  # pragma: no cover - definitions are never deleted
            raise MessageRejected(UNKNOWN_WORKFLOW, f"workflow {run['workflow']!r} vanished", "workflow")
        steps = repo.get_steps(conn, request.run_id)
        for name, row in steps.items():
            if row["status"] in (STEP_FAILED, STEP_SKIPPED, STEP_CANCELLED):
                repo.update_step(conn, request.run_id, name, status=STEP_PENDING, error=None,
                                 first_attempt=row["attempt"] + 1, finished_at=None)
        repo.update_run(conn, request.run_id, status=RUN_RUNNING, error=None, finished_at=None,
                        deadline_at=now + timedelta(seconds=workflow.timeout) if workflow.timeout else None)
        steps = repo.get_steps(conn, request.run_id)
        statuses = {name: r["status"] for name, r in steps.items()}
        outputs = {name: r["output"] for name, r in steps.items()}
        outbox = Outbox(conn, now, self.instrument)
        self._dispatch(conn, outbox, run, workflow, [(step, steps[step]["attempt"] + 1)
                                                     for step in ready_steps(workflow, statuses)], outputs, None)
        return outbox.flush()

    # -- reconciling ------------------------------------------------------------------------------
    def reconcile_unadvanced(self, conn: Connection, run_id: str, step: str,
                             attempt: int) -> list[Outgoing] | None:
        """Advance a run past an attempt that was recorded but whose step_finished never arrived
        (dead-lettered after an outage longer than its retries); None when there is nothing to do
        any more (another coordinator, or the message itself, got there first)."""
        run, steps = repo.lock_run_with_steps(conn, run_id)
        row = steps.get(step)
        if run is None or run["status"] != RUN_RUNNING or row is None or row["status"] != STEP_QUEUED \
                or row["attempt"] != attempt:
            return None
        recorded = repo.get_attempt(conn, run_id, step, attempt)
        if recorded is None:
            return None
        logger.warning("run %s step %s attempt %d was recorded but the run never advanced: advancing it now",
                       run_id, step, attempt)
        return self._advance(conn, run, steps, StepFinished(run_id, step, attempt), recorded)

    def reconcile_overdue(self, conn: Connection, run_id: str, step: str, attempt: int) -> list[Outgoing] | None:
        """Record a queued attempt whose result is overdue as lost (failed), then advance the run:
        the step is retried under its policy or the run fails with the reason. A real result
        arriving later is a duplicate of this attempt and is fenced. None when there is nothing
        to do any more."""
        run, steps = repo.lock_run_with_steps(conn, run_id)
        if run is None or run["status"] != RUN_RUNNING:
            return None
        row = steps.get(step)
        now = self.clock()
        due = repo.as_utc(row["result_due_at"]) if row is not None else None
        if row is None or row["status"] != STEP_QUEUED or row["attempt"] != attempt or due is None or due > now:
            return None
        workflow = self.workflow(conn, run["workflow"], run["version"])
        timeout = workflow.steps[step].timeout if workflow and step in workflow.steps else None
        error = (f"no result for attempt {attempt} within its timeout of {timeout or 0:g}s plus "
                 f"{self.result_grace_s:g}s: the step message or its result was lost (an executor gone for good, "
                 "or an outage longer than the retries)")
        queued = repo.as_utc(row["queued_at"]) or now
        if not repo.insert_attempt(conn, {
                "run_id": run_id, "step": step, "attempt": attempt, "ok": False, "output": None, "error": error,
                "error_type": "Lost", "node": None, "started_at": queued, "finished_at": now,
                "duration_ms": 0.0, "recorded_at": now}):
            return None  # its result came in meanwhile
        logger.warning("run %s step %s attempt %d recorded as lost: no result past its deadline", run_id, step, attempt)
        return self.step_finished(conn, StepFinished(run_id, step, attempt))

    # -- deadlines --------------------------------------------------------------------------------
    def expire_overdue(self, conn: Connection, limit: int = 100) -> list[str]:
        """Fail running runs past their workflow timeout; returns their ids."""
        now = self.clock()
        expired = []
        for run_id in repo.overdue_run_ids(conn, now, limit):
            run = repo.lock_run(conn, run_id)
            if run is None or run["status"] != RUN_RUNNING or run["deadline_at"] is None \
                    or repo.as_utc(run["deadline_at"]) > now:  # type: ignore[operator]
                continue
            workflow = self.workflow(conn, run["workflow"], run["version"])
            bound = f" of {workflow.timeout:g}s" if workflow and workflow.timeout else ""
            self._end_run(conn, run, RUN_FAILED, f"workflow timeout{bound}: the run did not finish in time")
            expired.append(run_id)
        return expired


def mask_params(params: dict[str, Any], secrets: frozenset[str] | set[str]) -> dict[str, Any]:
    """Params for display: the values of secret ones replaced by ***."""
    return {k: ("***" if k in secrets else v) for k, v in params.items()}


def mask_values(text: str, params: dict[str, Any], secrets: frozenset[str] | set[str] | list[str]) -> str:
    """Replace every occurrence of a secret param's value in a text (an error message) by ***.

    Scalars nested in lists and maps are masked too, each in its plain, repr() and JSON forms."""
    import json

    found: list[str] = []
    stack: list[Any] = [params.get(name) for name in secrets]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif value is not None and not isinstance(value, bool):
            found += [str(value), repr(value), json.dumps(value)]
    for form in sorted({f for f in found if f}, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def resolve_params(workflow: Workflow, given: dict[str, Any]) -> dict[str, Any]:
    """Run params: declared defaults overlaid with the given ones; unknown or missing ones rejected."""
    if workflow.params:
        unknown = sorted(set(given) - set(workflow.params))
        if unknown:
            raise MessageRejected(INVALID_PARAMS, f"workflow {workflow.name!r} has no param(s) {unknown} "
                                  f"(declared: {sorted(workflow.params)})", "params")
    params = {name: p.default for name, p in workflow.params.items() if not p.required or name in given}
    params.update(given)
    missing = sorted(name for name, p in workflow.params.items() if p.required and name not in given)
    if missing:
        raise MessageRejected(INVALID_PARAMS, f"workflow {workflow.name!r} needs param(s) {missing}", "params")
    return params
