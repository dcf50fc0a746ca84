"""OpenTelemetry tracing across every hop, carried in dramatiq message options.

dramatiq ignores AMQP headers, so W3C trace context travels in ``message.options["traceparent"]``
(and ``tracestate``). For every processed message this middleware opens a CONSUMER span that
continues the sender's trace, with the time the message waited in the queue as its attribute
``miniflow.queue_wait_ms``. Messages sent while a span is current carry its context. With no tracer provider
configured the OpenTelemetry API is a no-op, and the context still passes through unchanged.

It also scopes the log context (actors/logcontext.py): ``annotate`` binds the identifying fields
for log lines, and every message starts with an empty context that is dropped when it ends.
"""

from __future__ import annotations

import functools
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
from miniflow.protocol.states import RunStatus

from .. import logcontext

TRACER_NAME = "miniflow"
_propagator = TraceContextTextMapPropagator()
_KEYS = ("traceparent", "tracestate")


@functools.cache
def tracer() -> trace.Tracer:
    """MiniFlow's tracer, made once: ``trace.get_tracer`` builds a new one per call, which cost 2 %
    of a worker's time under the GIL. Made before a provider is installed, it is the API's proxy,
    which turns to the provider once there is one."""
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
        # The time in the queue is an attribute (and the gap after the span that sent the message), not
        # a span of its own: a span per step message was half of an executor's spans and their export.
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
    """The coordinator's hooks: a message it decides to send carries the context of the span that
    decided it (the handling of a result, a start), which counts them in ``miniflow.messages_sent``;
    the step's own span, in the executor, names the step. A span marks the end of a run.

    A PRODUCER span per message (``dispatch <step>``) was a third of the coordinator's spans, each
    one created, ended and exported under the interpreter lock; the tree is as connected without it."""

    def outgoing(self, actor_name: str, queue_name: str, attributes: dict[str, Any]) -> dict[str, Any]:
        span = trace.get_current_span()
        if not span.get_span_context().is_valid:
            return {}
        if span.is_recording():
            counted = getattr(span, "attributes", None) or {}
            span.set_attribute("miniflow.messages_sent", int(counted.get("miniflow.messages_sent", 0)) + 1)
        return inject({})

    def run_finished(self, run_id: str, workflow: str, status: str, error: str | None) -> None:
        span = tracer().start_span(f"run {status}", attributes={
            "miniflow.run_id": run_id, "miniflow.workflow": workflow, "miniflow.outcome": status})
        if status != RunStatus.SUCCEEDED and span.is_recording():
            span.set_status(Status(StatusCode.ERROR, (error or status)[:200]))
        span.end()
