"""OpenTelemetry tracing across every hop, carried in dramatiq message options.

dramatiq ignores AMQP headers, so W3C trace context travels in ``message.options["traceparent"]``
(and ``tracestate``). For every processed message this middleware opens a CONSUMER span that
continues the sender's trace, and for step tasks a span covering the time the message waited in
the queue. Messages sent while a span is current carry its context. With no tracer provider
configured the OpenTelemetry API is a no-op, and the context still passes through unchanged.

It also scopes the log context (actors/logcontext.py): ``annotate`` binds the identifying fields
for log lines, and every message starts with an empty context that is dropped when it ends.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from miniflow.coordinator import Instrument
from miniflow.protocol.names import EXECUTE_STEP
from miniflow.protocol.states import RunStatus

from .. import logcontext

TRACER_NAME = "miniflow"
_propagator = TraceContextTextMapPropagator()
_KEYS = ("traceparent", "tracestate")


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def inject(options: dict[str, Any], ctx: otel_context.Context | None = None) -> dict[str, Any]:
    """Write the current (or given) trace context into message options; returns them."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=ctx)
    options.update({k: v for k, v in carrier.items() if k in _KEYS})
    return options


def extract(options: dict[str, Any]) -> otel_context.Context:
    carrier = {k: options[k] for k in _KEYS if isinstance(options.get(k), str)}
    return _propagator.extract(carrier)


def current_trace_id() -> str | None:
    """The 32-hex-digit trace id of the current span, if there is a valid one."""
    span_context = trace.get_current_span().get_span_context()
    return f"{span_context.trace_id:032x}" if span_context.is_valid else None


def annotate(**attributes: Any) -> None:
    """Add miniflow.* attributes to the current span (values must be plain; never params), and bind
    the identifying ones (run_id, workflow, step, attempt, node, task) to the log context."""
    logcontext.bind(**attributes)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"miniflow.{k}": v for k, v in attributes.items() if v is not None})


def record_error(exc: BaseException, description: str) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(exc, escaped=False)
        span.set_status(Status(StatusCode.ERROR, description))


class Tracing(Middleware):
    """One CONSUMER span per processed message; context injected into every sent message."""

    def __init__(self) -> None:
        self._local = threading.local()

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        if "traceparent" not in message.options and trace.get_current_span().get_span_context().is_valid:
            inject(message.options)

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        parent = extract(message.options)
        queue = message.queue_name
        now_ns = time.time_ns()
        sent_ns = int(message.message_timestamp) * 1_000_000
        wait_ms = max(0.0, (now_ns - sent_ns) / 1e6)
        if message.actor_name == EXECUTE_STEP and sent_ns < now_ns:
            wait = tracer().start_span(f"wait {queue}", context=parent, kind=SpanKind.INTERNAL, start_time=sent_ns,
                                       attributes={"messaging.destination.name": queue})
            wait.end(end_time=now_ns)
        span = tracer().start_span(
            f"process {message.actor_name}", context=parent, kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": message.message_id,
                "messaging.rabbitmq.destination.routing_key": queue,
                "miniflow.queue_wait_ms": round(wait_ms, 3),
                "miniflow.redelivered": bool(getattr(message, "redelivered", False)),
            })
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._stack().append((span, token, logcontext.begin()))

    def _stack(self) -> list[tuple[Span, object, logcontext.ContextToken]]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _finish(self, exception: BaseException | None = None) -> None:
        stack = self._stack()
        if not stack:
            logcontext.clear()  # no message of ours in progress on this thread: nothing may linger
            return
        span, token, log_token = stack.pop()
        if exception is not None and span.is_recording():
            # The type and first line only: a traceback or a chained cause could carry values.
            first = (str(exception).strip().splitlines() or [""])[0][:200]
            span.add_event("exception", {"exception.type": type(exception).__name__, "exception.message": first})
            span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]
        logcontext.end(log_token)

    def after_process_message(self, broker: dramatiq.Broker, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        self._finish(exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._finish()


class TracingInstrument(Instrument):
    """The coordinator's hooks as spans: one PRODUCER span per message it decides to send (its
    context travels in the message) and a span marking the end of a run."""

    def outgoing(self, actor_name: str, queue_name: str, attributes: dict[str, Any]) -> dict[str, Any]:
        if not trace.get_current_span().get_span_context().is_valid:
            return {}
        step = attributes.get("step")
        name = f"dispatch {step}" if actor_name == EXECUTE_STEP and step else f"send {actor_name}"
        span = tracer().start_span(name, kind=SpanKind.PRODUCER, attributes={
            "messaging.system": "rabbitmq", "messaging.operation.type": "send",
            "messaging.destination.name": queue_name,
            **{f"miniflow.{k}": v for k, v in attributes.items() if v is not None}})
        options = inject({}, trace.set_span_in_context(span))
        span.end()
        return options

    def run_finished(self, run_id: str, workflow: str, status: str, error: str | None) -> None:
        span = tracer().start_span(f"run {status}", attributes={
            "miniflow.run_id": run_id, "miniflow.workflow": workflow, "miniflow.outcome": status})
        if status != RunStatus.SUCCEEDED and span.is_recording():
            span.set_status(Status(StatusCode.ERROR, (error or status)[:200]))
        span.end()
