"""The executor role: runs one step attempt and hands in its result.

It looks the task up in the node's registry, runs it (in an isolated child process when the
message is a redelivery), classifies a failure into what the attempt records (an error type and a
masked, bounded text), and sends the result to the results queue, riding out a broker that is out
of reach.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, TimeLimit
from dramatiq.middleware.time_limit import TimeLimitExceeded

from miniflow.persistence.offload import LazyInputs, Offload, StepArtifacts, holds_stored
from miniflow.protocol import codec
from miniflow.protocol.clock import epoch_s
from miniflow.protocol.envelope import envelope
from miniflow.protocol.errors import (
    ArtifactError,
    BrokerUnavailable,
    EncodeFailed,
    OutputNotPlainData,
    StepFailed,
    StepNotFound,
    StepTimedOut,
)
from miniflow.protocol.masking import mask_values
from miniflow.protocol.messages import StepResult, StepTask
from miniflow.protocol.names import RECORD_RESULT, QueueNames
from miniflow.protocol.states import StepStatus

from .broker import publish
from .faults import FaultPoints
from .guard import as_message
from .isolation import MAX_ERROR_LEN, run_isolated
from .logcontext import log_step_failure
from .metrics import NULL, Metrics
from .middleware.tracing import annotate, record_error
from .outages import BROKER, OUTAGES
from .progress import ProgressReporter
from .registry import Registry, StepContext

logger = logging.getLogger("miniflow.actors")
# How long an executor keeps trying to hand in a finished step's result while the broker is out of
# reach (a partition, a broker restart). Past it the step message goes back to dramatiq's retries.
RESULT_RESEND_S = 3600.0
RESULT_RESEND_MAX_DELAY_S = 10.0
# A node without a step's task hands the message back with this delay, doubling per decline.
DECLINE_FIRST_DELAY_S = 1.0
DECLINE_MAX_DELAY_S = 30.0
MAX_TRACEBACK_LEN = 8000  # characters of a failed attempt's traceback kept (its end)

Emit = Callable[..., None]


def step_priority(message: Any) -> int:
    """The priority a step message came with (its run's, 0-9; 0 when absent or not a small int)."""
    value = (getattr(message, "options", None) or {}).get("broker_priority") if message is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9 else 0


class Executor:
    """The ``execute_step`` handler of one node."""

    def __init__(self, broker: dramatiq.Broker, names: QueueNames, registry: Registry, node: str, *,
                 faults: FaultPoints, stop: threading.Event, emit: Emit, progress: ProgressReporter,
                 metrics: Metrics = NULL, offload: Offload | None = None) -> None:
        self.broker = broker
        self.metrics = metrics
        self.offload = offload  # large outputs by reference; inputs fetched when read (persistence/offload.py)
        self.progress = progress
        self.names = names
        self.registry = registry
        self.node = node
        self.faults = faults
        self.stop = stop
        self.emit = emit

    def execute_step(self, payload: dict[str, Any]) -> None:
        task = StepTask.from_payload(payload)
        message = CurrentMessage.get_current_message()
        if task.task not in self.registry:
            self._decline(task, message)
            return
        # RabbitMQ redelivers a step whose executor died holding it. It may be the step that killed
        # that process (a poison step): run it in a child process, so that if it kills again, only
        # the child dies and the attempt is recorded as failed with the reason.
        isolate = bool(getattr(message, "redelivered", False))
        if isolate:
            logger.warning("run %s step %s attempt %d redelivered: running it in an isolated process",
                           task.run_id, task.step, task.attempt)
        annotate(run_id=task.run_id, workflow=task.workflow, step=task.step, attempt=task.attempt, task=task.task,
                 node=self.node, isolated=isolate or None)
        self.emit("step_started", run_id=task.run_id, step=task.step, attempt=task.attempt, node=self.node)
        started = epoch_s()
        self.progress.started(task)
        try:
            output, failure = self._run(task, isolate)
        finally:
            self.progress.finished()
        finished = epoch_s()
        self.faults.hit("executor.after_body")
        error = trace = None
        if failure is not None:  # mask first, then truncate: a cut could split a secret
            error = mask_values(str(failure), task.params, task.secret_params)[:MAX_ERROR_LEN]
            if failure.traceback:  # the tail of it: the frames nearest the error
                trace = mask_values(failure.traceback, task.params, task.secret_params)[-MAX_TRACEBACK_LEN:]
            # The span gets the (masked) message only.
            record_error(StepFailed(error, failure.error_type), error[:200])
            log_step_failure(logger, failure.error_type, error)
        annotate(outcome=StepStatus.FAILED if failure else StepStatus.SUCCEEDED)
        result = StepResult(run_id=task.run_id, step=task.step, attempt=task.attempt, ok=failure is None,
                            output=None if failure else output, error=error,
                            error_type=failure.error_type if failure else None, node=self.node,
                            started_at=started, finished_at=finished, traceback=trace, cap=task.cap)
        self.report(result, priority=step_priority(message))
        if self.metrics.enabled:
            wait = queue_wait_s(message, started)
            self.metrics.step_executed(task.workflow, task.step, task.attempt, failure is None, finished - started,
                                       wait)
        self.emit("step_finished", run_id=task.run_id, step=task.step, attempt=task.attempt, ok=failure is None,
                  error=error, duration_ms=(finished - started) * 1000, node=self.node)

    def _decline(self, task: StepTask, message: Any) -> None:
        """Hand a step this node cannot run back to its queue, after a delay that doubles each time
        (so that it does not spin here), without using one of its attempts. Another executor of the
        pool picks it up; the run shows why the step waits meanwhile."""
        declines = int((message.options or {}).get("declines", 0)) + 1 if message is not None else 1
        delay_s = min(DECLINE_MAX_DELAY_S, DECLINE_FIRST_DELAY_S * 2 ** (declines - 1))
        detail = (f"task {task.task!r} is not registered on executor {self.node} (handed back {declines} time(s); "
                  "waiting for an executor of this queue that has it: see the routing rule in the README)")
        logger.info("run %s step %s attempt %d: task %r is not registered here; handed back (decline %d, "
                    "again in %.0f s)", task.run_id, task.step, task.attempt, task.task, declines, delay_s)
        if message is not None:
            again = message.copy(options={"declines": declines})
            publish(self.broker, again, delay=int(delay_s * 1000))
        self.progress.declined(task, detail)

    def _run(self, task: StepTask, isolate: bool) -> tuple[Any, StepFailed | None]:
        """The step's output, or what its failure records."""
        offload = self.offload
        inputs, item = task.inputs, (task.map or {}).get("item")
        if offload is not None and any(holds_stored(value) for value in inputs.values()):
            inputs = LazyInputs(inputs, offload)
        ctx = StepContext(run_id=task.run_id, workflow=task.workflow, step=task.step, attempt=task.attempt,
                          params=task.params, config=task.config, inputs=inputs, node=self.node,
                          item=offload.resolve(item) if offload is not None else item,
                          index=(task.map or {}).get("index"),
                          artifacts=StepArtifacts(offload) if offload is not None else None)
        try:
            fn = self.registry.get(task.task)
            output = run_isolated(fn, ctx, task.timeout_s) if isolate else fn(ctx)
            output = handed_in(output, offload)
        except TimeLimitExceeded:
            return None, StepTimedOut(f"step exceeded its timeout of {task.timeout_s:g}s" if task.timeout_s
                                      else "step exceeded its time limit")
        except StepNotFound as exc:
            return None, StepFailed(str(exc), "StepNotFound")
        except StepFailed as exc:
            return None, exc
        except Exception as exc:  # noqa: BLE001 - a step may raise anything: it is recorded (and logged) once
            return None, StepFailed(f"{type(exc).__name__}: {exc}", type(exc).__name__, traceback.format_exc())
        return output, None

    def report(self, result: StepResult, *, priority: int = 0) -> None:
        """Send a step's result, riding out a broker that is out of reach.

        A result is the only copy of work already done, so an executor cut off from the broker
        keeps it and tries again (with backoff, up to RESULT_RESEND_S) instead of dropping it. If
        the cut outlasted the broker's heartbeat, the step was meanwhile redelivered and recorded
        from another node: this late result then arrives as a duplicate and is fenced by the
        results role (the first recorded attempt wins). A stopping worker gives up at once; its
        step message was not acked, so it is redelivered."""
        self._end_time_limit()
        # The result goes first on a busy results queue as its step did on its pool (the run's priority).
        message = envelope(self.names.results, RECORD_RESULT, result.to_payload(),
                           options={"broker_priority": priority} if priority else None)
        deadline = time.monotonic() + RESULT_RESEND_S
        delay, failures = 0.5, 0
        while True:
            try:
                publish(self.broker, as_message(message))
            except TimeLimitExceeded:  # only if the limit could not be lifted: it fires once, go on
                continue
            except BrokerUnavailable as exc:
                failures += 1
                cause = type(exc.__cause__ or exc).__name__
                OUTAGES.failed(BROKER, cause)
                if time.monotonic() + delay > deadline or self.stop.is_set():
                    logger.error("result of run %s step %s attempt %d not delivered after %d tries: %s",
                                 result.run_id, result.step, result.attempt, failures, cause)
                    raise
                logger.info("result of run %s step %s attempt %d not delivered (broker out of reach: %s); "
                            "trying again in %.1fs", result.run_id, result.step, result.attempt, cause, delay)
                if self.stop.wait(delay):
                    raise
                delay = min(delay * 2, RESULT_RESEND_MAX_DELAY_S)
                continue
            OUTAGES.recovered(BROKER)
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


def queue_wait_s(message: Any, started: float) -> float | None:
    """From when a step message was sent (or, for a delayed one such as a retry after its backoff, when
    it became due: its eta) to ``started``; None when the message says neither."""
    sent_ms = getattr(message, "message_timestamp", None)
    eta_ms = (getattr(message, "options", None) or {}).get("eta")
    due = max(v for v in (sent_ms, eta_ms, 0) if isinstance(v, int) and not isinstance(v, bool))
    return max(0.0, started - due / 1000) if due > 0 else None


def handed_in(output: Any, offload: Offload | None) -> Any:
    """A step's output as its result carries it: itself, or (over the artifact threshold) a reference
    to it in the artifact store; OutputNotPlainData unless it can be stored and sent."""
    if offload is not None:
        try:
            output = offload.outgoing(output)
        except (ValueError, TypeError) as exc:
            raise OutputNotPlainData(f"the step's return value is not JSON-compatible data: {exc}") from None
        except ArtifactError as exc:
            raise StepFailed(f"the step's output could not be stored as an artifact: {exc}",
                             type(exc).__name__) from None
    check_output(output)
    return output


def check_output(output: Any) -> None:
    """OutputNotPlainData unless a step's return value can be stored (JSON) and sent on (msgpack)."""
    try:
        codec.check_encodable(output, "output", 0)
        codec.check_size(output, "output")
        text = json.dumps(output, allow_nan=False)
    except (ValueError, TypeError, EncodeFailed) as exc:
        raise OutputNotPlainData(f"the step's return value is not JSON-compatible data: {exc}") from None
    if len(text) > codec.MAX_MESSAGE_BYTES // 2:
        raise OutputNotPlainData(f"the step's return value is {len(text)} bytes as JSON; the limit is "
                                 f"{codec.MAX_MESSAGE_BYTES // 2}: store large data elsewhere and return a "
                                 "reference")
