"""The four actors of MiniFlow, bound to one broker by role.

    role          actors (queue)
    coordinator   start_workflow, cancel_run (<ns>.ingress); step_finished (<ns>.coordinator)
    results       record_result, record_dead_letter (<ns>.results)
    executor      execute_step (<ns>.steps and <ns>.steps.<pool>)

Roles may share a process. Coordinator and results need the database; an executor needs only
the broker. Actors are created at run time (not at import), so the namespace and broker come
from settings and tests can build as many nodes as they like.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.errors import BrokerConnectionError as BrokerUnreachable
from dramatiq.middleware import CurrentMessage, TimeLimit
from dramatiq.middleware.time_limit import TimeLimitExceeded

from coordinator.service import Coordinator, mask_values
from persistence import Database
from persistence import repository as repo
from protocol import codec
from protocol.errors import ConfigError, EncodeFailed, MessageRejected, StepNotFound
from protocol.messages import (
    CancelRun,
    DeadLetterReport,
    RetryRun,
    StartWorkflow,
    StepFinished,
    StepResult,
    StepTask,
    envelope,
)
from protocol.names import (
    CANCEL_RUN,
    EXECUTE_STEP,
    RECORD_DEAD_LETTER,
    RECORD_RESULT,
    RETRY_RUN,
    START_WORKFLOW,
    STEP_FINISHED,
    QueueNames,
)

from .faults import NONE as NO_FAULTS
from .faults import FaultPoints
from .guard import as_message, node_name
from .middleware import Rejections, Tracing, TracingInstrument
from .middleware.tracing import annotate, current_trace_id, record_error
from .registry import Registry, StepContext
from .registry import registry as global_registry
from .relay import Relay

logger = logging.getLogger("miniflow.actors")

COORDINATOR = "coordinator"
RESULTS = "results"
EXECUTOR = "executor"
ROLES = (COORDINATOR, RESULTS, EXECUTOR)
MAX_ERROR_LEN = 2000
# How long an executor keeps trying to hand in a finished step's result while the broker is out of
# reach (a partition, a broker restart). Past it the step message goes back to dramatiq's retries.
RESULT_RESEND_S = 3600.0
RESULT_RESEND_MAX_DELAY_S = 10.0
RECONCILE_EVERY_S = 10.0
UNADVANCED_AFTER_S = 60.0  # a recorded attempt's step_finished normally lands within milliseconds
# Handled retry ids are kept this long: far longer than a message can wait to be redelivered, and
# than dramatiq keeps a dead-lettered one (7 days) for a replay.
HANDLED_KEEP_S = 30 * 24 * 3600.0


Listener = Callable[[str, dict[str, Any]], None]


class Node:
    """The actors of one process, for the given roles, on one broker."""

    def __init__(self, broker: dramatiq.Broker, names: QueueNames, roles: Iterable[str], *,
                 db: Database | None = None, registry: Registry | None = None,
                 pools: Iterable[str] = (), coordinator: Coordinator | None = None,
                 listener: Listener | None = None, faults: FaultPoints = NO_FAULTS) -> None:
        self.broker = broker
        self.names = names
        self.roles = tuple(dict.fromkeys(roles))
        unknown = [r for r in self.roles if r not in ROLES]
        if unknown or not self.roles:
            raise ConfigError(f"unknown role(s) {unknown}: choose from {', '.join(ROLES)}")
        if (COORDINATOR in self.roles or RESULTS in self.roles) and db is None:
            raise ConfigError("the coordinator and results roles need a database (MINIFLOW_DATABASE_URL)")
        self.db = db
        self.registry = registry or global_registry
        self.pools = tuple(dict.fromkeys(p for p in pools if p))
        self.coordinator = coordinator or Coordinator(names, instrument=TracingInstrument())
        self.listener = listener
        self.node = node_name()
        self.faults = faults
        self.relay = Relay(broker, db, faults=faults) if db is not None else None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        guard = getattr(broker, "guard", None)
        if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
            broker.add_middleware(CurrentMessage())
        if guard is not None and not any(isinstance(m, Rejections) for m in broker.middleware):
            broker.add_middleware(Rejections(guard))
        if not any(isinstance(m, Tracing) for m in broker.middleware):
            broker.add_middleware(Tracing())
        self._declare()

    # -- wiring -----------------------------------------------------------------------------------
    def _actor(self, fn: Callable[[dict[str, Any]], None], name: str, queue: str, **options: Any) -> None:
        options.setdefault("throws", (MessageRejected,))
        dramatiq.Actor(fn, broker=self.broker, actor_name=name, queue_name=queue, priority=0,
                       options=options)

    def _declare(self) -> None:
        if COORDINATOR in self.roles:
            self._actor(self._start_workflow, START_WORKFLOW, self.names.ingress)
            self._actor(self._cancel_run, CANCEL_RUN, self.names.ingress)
            self._actor(self._retry_run, RETRY_RUN, self.names.ingress)
            self._actor(self._step_finished, STEP_FINISHED, self.names.coordinator)
        if RESULTS in self.roles:
            self._actor(self._record_result, RECORD_RESULT, self.names.results)
            self._actor(self._record_dead_letter, RECORD_DEAD_LETTER, self.names.results)
        if EXECUTOR in self.roles:
            # Step time limits travel per message (options.time_limit); this is the ceiling.
            self._actor(self._execute_step, EXECUTE_STEP, self.names.steps, time_limit=24 * 3600 * 1000)
            for pool in self.pools:
                self.broker.declare_queue(self.names.step_queue(pool))

    def queues(self) -> set[str]:
        """The canonical queues this node consumes (the Worker's whitelist)."""
        queues: set[str] = set()
        if COORDINATOR in self.roles:
            queues |= {self.names.ingress, self.names.coordinator}
        if RESULTS in self.roles:
            queues.add(self.names.results)
        if EXECUTOR in self.roles:
            queues.add(self.names.steps)
            queues |= {self.names.step_queue(p) for p in self.pools}
        return queues

    def start_background(self) -> None:
        if self.relay is not None:
            self.relay.start()
        if COORDINATOR in self.roles:
            thread = threading.Thread(target=self._watch_deadlines, name="miniflow-deadlines", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_background(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.relay is not None:
            self.relay.stop()

    def _watch_deadlines(self, every_s: float = 1.0) -> None:
        """Fail runs past their workflow timeout (any coordinator may do it; row locks serialise),
        and every RECONCILE_EVERY_S reconcile what messages lost in long outages left behind."""
        assert self.db is not None
        next_reconcile = time.monotonic() + RECONCILE_EVERY_S
        while not self._stop.wait(every_s):
            try:
                with self.db.transaction() as conn:
                    expired = self.coordinator.expire_overdue(conn)
                for run_id in expired:
                    logger.warning("run %s failed: workflow timeout", run_id)
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + RECONCILE_EVERY_S
                    self.reconcile_once()
            except Exception as exc:  # keep watching: the database may come back
                logger.warning("deadline check failed: %s", type(exc).__name__)

    def reconcile_once(self, unadvanced_after_s: float = UNADVANCED_AFTER_S) -> int:
        """Repair what lost messages leave behind; returns how many steps were repaired (items
        another coordinator repaired first are skipped).

        - an attempt recorded whose run never advanced (its step_finished was dead-lettered):
          the run is advanced now;
        - a queued attempt past its result deadline with no result (its step message or result
          was lost): recorded as a lost attempt, then retried or failed by the step's policy.
        Each repair is its own transaction, fenced exactly as the message it replaces."""
        assert self.db is not None and self.relay is not None
        with self.db.connect() as conn:
            unadvanced = repo.unadvanced_attempts(conn, repo.utcnow() - timedelta(seconds=unadvanced_after_s))
            overdue = repo.overdue_results(conn, self.coordinator.clock())
        repaired = 0
        for fix, items in ((self.coordinator.reconcile_unadvanced, unadvanced),
                           (self.coordinator.reconcile_overdue, overdue)):
            for run_id, step, attempt in items:
                try:
                    with self.db.transaction() as conn:
                        outgoing = fix(conn, run_id, step, attempt)
                    if outgoing is not None:
                        self.relay.publish(outgoing)
                        repaired += 1
                except Exception as exc:  # the others still get their turn; this one comes back next pass
                    logger.warning("could not reconcile run %s step %s attempt %d: %s", run_id, step, attempt,
                                   type(exc).__name__)
        with self.db.transaction() as conn:
            repo.prune_handled(conn, repo.utcnow() - timedelta(seconds=HANDLED_KEEP_S))
        return repaired

    def _emit(self, kind: str, **data: Any) -> None:
        if self.listener is not None:
            try:
                self.listener(kind, data)
            except Exception:  # a listener must never break a step
                logger.exception("event listener failed on %s", kind)

    def _send(self, queue: str, actor: str, payload: dict[str, Any]) -> None:
        self.broker.enqueue(as_message(envelope(queue, actor, payload)))

    # -- coordinator role -------------------------------------------------------------------------
    def _start_workflow(self, payload: dict[str, Any]) -> None:
        message = CurrentMessage.get_current_message()
        start = StartWorkflow.from_payload(_single(payload))
        annotate(workflow=start.workflow)
        assert self.db is not None and self.relay is not None
        with self.db.transaction() as conn:
            outcome = self.coordinator.start(conn, start, message.message_id if message else "",
                                             trace_id=current_trace_id())
        self.faults.hit("coordinator.after_commit")
        annotate(run_id=outcome.run_id, outcome="started" if outcome.created else "duplicate")
        self.relay.publish(outcome.outgoing)
        if outcome.created:
            logger.info("run %s of %s started", outcome.run_id, start.workflow)
            self._emit("run_started", run_id=outcome.run_id, workflow=start.workflow)
        else:
            logger.info("duplicate start of %s: run %s exists", start.workflow, outcome.run_id)

    def _cancel_run(self, payload: dict[str, Any]) -> None:
        request = CancelRun.from_payload(_single(payload))
        annotate(run_id=request.run_id)
        assert self.db is not None
        with self.db.transaction() as conn:
            cancelled = self.coordinator.cancel(conn, request)
        logger.info("run %s %s", request.run_id, "cancelled" if cancelled else "had already ended")

    def _retry_run(self, payload: dict[str, Any]) -> None:
        request = RetryRun.from_payload(_single(payload))
        message = CurrentMessage.get_current_message()
        annotate(run_id=request.run_id)
        assert self.db is not None and self.relay is not None
        with self.db.transaction() as conn:
            outgoing = self.coordinator.retry(conn, request, message.message_id if message else "")
        if outgoing is None:
            return
        self.faults.hit("coordinator.after_commit")
        self.relay.publish(outgoing)
        logger.info("run %s retried", request.run_id)

    def _step_finished(self, payload: dict[str, Any]) -> None:
        event = StepFinished.from_payload(_single(payload))
        annotate(run_id=event.run_id, step=event.step, attempt=event.attempt)
        assert self.db is not None and self.relay is not None
        with self.db.transaction() as conn:
            outgoing = self.coordinator.step_finished(conn, event)
        self.faults.hit("coordinator.after_commit")
        self.relay.publish(outgoing)

    # -- results role -----------------------------------------------------------------------------
    def _record_result(self, payload: dict[str, Any]) -> None:
        result = StepResult.from_payload(_single(payload))
        annotate(run_id=result.run_id, step=result.step, attempt=result.attempt, node=result.node,
                 outcome="succeeded" if result.ok else "failed")
        assert self.db is not None and self.relay is not None
        with self.db.transaction() as conn:
            outgoing = self.coordinator.record_result(conn, result, advance=COORDINATOR in self.roles)
        self.faults.hit("results.after_commit")
        self.relay.publish(outgoing)

    def _record_dead_letter(self, payload: dict[str, Any]) -> None:
        report = DeadLetterReport.from_payload(_single(payload))
        assert self.db is not None
        with self.db.transaction() as conn:
            self.coordinator.record_dead_letter(conn, report)

    # -- executor role ----------------------------------------------------------------------------
    def _execute_step(self, payload: dict[str, Any]) -> None:
        task = StepTask.from_payload(_single(payload))
        message = CurrentMessage.get_current_message()
        # RabbitMQ redelivers a step whose executor died holding it. It may be the step that killed
        # that process (a poison step): run it in a child process, so that if it kills again, only
        # the child dies and the attempt is recorded as failed with the reason.
        isolate = bool(getattr(message, "redelivered", False))
        if isolate:
            logger.warning("run %s step %s attempt %d redelivered: running it in an isolated process",
                           task.run_id, task.step, task.attempt)
        ctx = StepContext(run_id=task.run_id, workflow=task.workflow, step=task.step, attempt=task.attempt,
                          params=task.params, config=task.config, inputs=task.inputs, node=self.node)
        annotate(run_id=task.run_id, workflow=task.workflow, step=task.step, attempt=task.attempt, task=task.task,
                 node=self.node)
        self._emit("step_started", run_id=task.run_id, step=task.step, attempt=task.attempt, node=self.node)
        started = time.time()
        output: Any = None
        error: str | None = None
        error_type: str | None = None
        caught: BaseException | None = None
        try:
            fn = self.registry.get(task.task)
            if isolate:
                annotate(isolated=True)
                output = run_isolated(fn, ctx, task.timeout_s)
            else:
                output = fn(ctx)
            _check_output(output)
        except TimeLimitExceeded as exc:
            error_type, error = "Timeout", f"step exceeded its timeout of {task.timeout_s:g}s" \
                if task.timeout_s else "step exceeded its time limit"
            caught = exc
        except StepNotFound as exc:
            error_type, error, caught = "StepNotFound", str(exc), exc
        except StepCrashed as exc:
            error_type, error, caught = "Poison", str(exc), exc
        except StepFailedInChild as exc:
            error_type, caught = str(exc).split(":", 1)[0], exc
            error = str(exc)[:MAX_ERROR_LEN]
        except Exception as exc:
            error_type, caught = type(exc).__name__, exc
            error = f"{error_type}: {exc}"
            logger.info("step %s of run %s failed on attempt %d: %s", task.step, task.run_id,
                        task.attempt, error_type)
        finished = time.time()
        self.faults.hit("executor.after_body")
        ok = error is None
        if error is not None:  # mask first, then truncate: a cut could split a secret
            error = mask_values(error, task.params, task.secret_params)[:MAX_ERROR_LEN]
        if error is not None and caught is not None:
            # Recorded with the (masked) message only: a traceback's locals could hold secrets.
            record_error(_StepFailed(error), error[:200])
        annotate(outcome="succeeded" if ok else "failed")
        result = StepResult(run_id=task.run_id, step=task.step, attempt=task.attempt, ok=ok,
                            output=output if ok else None, error=error, error_type=error_type,
                            node=self.node, started_at=started, finished_at=finished)
        self._report(result)
        self._emit("step_finished", run_id=task.run_id, step=task.step, attempt=task.attempt, ok=ok,
                   error=error, duration_ms=(finished - started) * 1000, node=self.node)


    def _report(self, result: StepResult) -> None:
        """Send a step's result, riding out a broker that is out of reach.

        A result is the only copy of work already done, so an executor cut off from the broker
        keeps it and tries again (with backoff, up to RESULT_RESEND_S) instead of dropping it. If
        the cut outlasted the broker's heartbeat, the step was meanwhile redelivered and recorded
        from another node: this late result then arrives as a duplicate and is fenced by the
        results role (the first recorded attempt wins). A stopping worker gives up at once; its
        step message was not acked, so it is redelivered."""
        self._end_time_limit()
        payload = result.to_payload()
        deadline = time.monotonic() + RESULT_RESEND_S
        delay, failures = 0.5, 0
        while True:
            try:
                self._send(self.names.results, RECORD_RESULT, payload)
            except TimeLimitExceeded:  # only if the limit could not be lifted: it fires once, go on
                continue
            except BrokerUnreachable as exc:
                failures += 1
                if time.monotonic() + delay > deadline or self._stop.is_set():
                    logger.error("result of run %s step %s attempt %d not delivered after %d tries: %s",
                                 result.run_id, result.step, result.attempt, failures, type(exc).__name__)
                    raise
                logger.warning("result of run %s step %s attempt %d not delivered (broker out of reach: %s); "
                               "trying again in %.1fs", result.run_id, result.step, result.attempt,
                               type(exc).__name__, delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, RESULT_RESEND_MAX_DELAY_S)
                continue
            if failures:
                logger.warning("result of run %s step %s attempt %d delivered after %d failed tries",
                               result.run_id, result.step, result.attempt, failures)
            return


    def _end_time_limit(self) -> None:
        """The step's time limit bounds its body; once the body has returned, handing in the result
        (which may wait for the broker) must not be interrupted by it."""
        for middleware in self.broker.middleware:
            manager = getattr(middleware, "manager", None) if isinstance(middleware, TimeLimit) else None
            if manager is not None:
                manager.remove_timeout(threading.get_ident())


class StepCrashed(Exception):
    """A step killed the (child) process running it."""


def run_isolated(fn: Callable[[StepContext], Any], ctx: StepContext, timeout_s: float | None) -> Any:
    """Run a step function in a forked child process; return its output or raise its failure.

    A child killed by a signal raises StepCrashed; past ``timeout_s`` the child is killed and
    TimeoutError is raised. The child only runs the function and writes to a pipe."""
    mp = multiprocessing.get_context("fork")
    reader, writer = mp.Pipe(duplex=False)

    def child() -> None:
        try:
            writer.send(("ok", fn(ctx)))
        except BaseException as exc:  # report everything, then leave without clean-up
            writer.send(("error", type(exc).__name__, str(exc)[:MAX_ERROR_LEN]))
        finally:
            os._exit(0)

    process = mp.Process(target=child, daemon=True)
    process.start()
    writer.close()
    try:
        if not reader.poll(timeout_s):
            raise TimeoutError(f"step exceeded its timeout of {timeout_s:g}s (run in an isolated process)")
        try:
            reply = reader.recv()
        except EOFError:
            process.join(5)
            code = process.exitcode
            raise StepCrashed(f"step killed the process running it (exit {code}"
                              + (f", signal {-code}" if code is not None and code < 0 else "") + "); it had "
                              "already been delivered to an executor that died: treated as a poison step") from None
        if reply[0] == "ok":
            return reply[1]
        raise StepFailedInChild(f"{reply[1]}: {reply[2]}")
    finally:
        reader.close()
        if process.is_alive():
            process.kill()
        process.join(5)


class StepFailedInChild(Exception):
    """A step raised in its isolated child process (the message names the original type)."""


class _StepFailed(Exception):
    """What a step's span records as its exception: the masked error text, no traceback."""


def _single(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        from protocol.messages import BAD_ARGS

        raise MessageRejected(BAD_ARGS, "args must hold exactly one payload map", "args")
    return payload


class OutputNotPlainData(ValueError):
    """A step returned something that cannot be stored and passed on."""


def _check_output(output: Any) -> None:
    try:
        codec.check_encodable(output, "output", 0)
        text = json.dumps(output, allow_nan=False)
    except (ValueError, TypeError, EncodeFailed) as exc:
        raise OutputNotPlainData(f"the step's return value is not JSON-compatible data: {exc}") from None
    if len(text) > codec.MAX_MESSAGE_BYTES // 2:
        raise OutputNotPlainData(f"the step's return value is {len(text)} bytes as JSON; the limit is "
                                 f"{codec.MAX_MESSAGE_BYTES // 2}: store large data elsewhere and return a "
                                 "reference")
