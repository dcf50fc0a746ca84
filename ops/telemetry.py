"""OpenTelemetry set-up from the standard OTEL_* environment variables.

Tracing exports spans over OTLP/HTTP (protobuf), which Jaeger accepts natively, when
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set and neither
OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none says otherwise. The SDK itself reads the rest
(OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS, ...). Without an
endpoint nothing is installed: the OpenTelemetry API stays a no-op and only passes trace context on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

logger = logging.getLogger("miniflow.telemetry")


class SpanCounts:
    """Spans this process ended (sampled) and what became of them: exported, or refused by the
    collector. The rest were dropped by the batch processor, whose queue was full
    (OTEL_BSP_MAX_QUEUE_SIZE), or are still queued; after shutdown's flush, none are."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ended = self.exported = self.failed = 0

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    @property
    def dropped(self) -> int:
        return max(0, self.ended - self.exported - self.failed)


def _counting(counts: SpanCounts, exporter: Any) -> tuple[Any, Any]:
    """A processor that counts ended spans (ahead of the batch processor) and an exporter that
    counts what ``exporter`` took and refused."""
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Ended(SpanProcessor):
        def on_end(self, span: Any) -> None:
            if span.context is not None and span.context.trace_flags.sampled:
                counts.add(ended=1)

    class Exported(SpanExporter):
        def export(self, spans: Any) -> Any:
            try:
                result = exporter.export(spans)
            except Exception:
                counts.add(failed=len(spans))  # a refusal, not a full queue
                raise
            counts.add(**{"exported" if result == SpanExportResult.SUCCESS else "failed": len(spans)})
            return result

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(exporter.force_flush(timeout_millis))

    return Ended(), Exported()


class Telemetry:
    """The installed tracer provider (or none); ``shutdown()`` flushes what is buffered and says how
    many spans were exported and how many were lost (dropped or refused)."""

    def __init__(self, provider: Any = None, counts: SpanCounts | None = None) -> None:
        self.provider = provider
        self.counts = counts or SpanCounts()

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def instrument_engine(self, engine: Any) -> None:
        """Spans for database work (SQLAlchemy instrumentation), when tracing is on."""
        if not self.enabled:
            return
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=self.provider,
                                            enable_commenter=False, skip_dep_check=True)

    def shutdown(self) -> None:
        if self.provider is None:
            return
        try:
            self.provider.shutdown()
        except Exception as exc:  # noqa: BLE001 - never fail an exit because a collector is gone
            logger.warning("flushing spans failed: %s", type(exc).__name__)
        c = self.counts
        if c.dropped or c.failed:
            logger.warning("tracing: %d of %d spans lost: %d dropped (the span queue was full: raise "
                           "OTEL_BSP_MAX_QUEUE_SIZE), %d refused by the collector", c.dropped + c.failed, c.ended,
                           c.dropped, c.failed)
        else:
            logger.info("tracing: %d spans exported, none lost", c.exported)


def tracing_requested(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(service_name: str, environ: Mapping[str, str] | None = None) -> Telemetry:
    """Install a tracer provider exporting over OTLP/HTTP, if the environment asks for it."""
    env = os.environ if environ is None else environ
    if not tracing_requested(env):
        return Telemetry()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({
        "service.name": env.get("OTEL_SERVICE_NAME") or service_name,
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
    })
    provider = TracerProvider(resource=resource)
    counts = SpanCounts()
    ended, exporter = _counting(counts, OTLPSpanExporter())
    provider.add_span_processor(ended)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return Telemetry(provider, counts)
