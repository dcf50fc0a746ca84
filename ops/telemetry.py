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
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

logger = logging.getLogger("miniflow.telemetry")


class Telemetry:
    """The installed tracer provider (or none); ``shutdown()`` flushes what is buffered."""

    def __init__(self, provider: Any = None) -> None:
        self.provider = provider

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
        if self.provider is not None:
            try:
                self.provider.shutdown()
            except Exception as exc:  # noqa: BLE001 - never fail an exit because a collector is gone
                logger.warning("flushing spans failed: %s", type(exc).__name__)


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
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return Telemetry(provider)
