"""A trace sink: a small OTLP/HTTP receiver that keeps the spans MiniFlow's processes export.

For the integration tests and the benchmarks (and anyone checking that a run is one trace without
a Jaeger at hand): it listens on 127.0.0.1 (a free port), accepts POST /v1/traces with protobuf
bodies as the OTLP exporter sends them, decodes ExportTraceServiceRequest messages and keeps every
span with its service name. Point OTEL_EXPORTER_OTLP_ENDPOINT at its ``endpoint``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0
    events: tuple[str, ...] = ()
    start_ns: int = 0
    end_ns: int = 0


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class OtlpReceiver:
    """``defer``: keep the bodies as they come and decode them when ``received()`` is asked (a
    benchmark keeps the decoding out of the time it measures, as a collector on another machine would)."""

    def __init__(self, *, defer: bool = False) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        self.defer = defer
        self._bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                if receiver.defer:
                    with receiver.lock:
                        receiver._bodies.append(body)
                else:
                    receiver._add(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(attrs.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(ReceivedSpan(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                        name=s.name, kind=s.kind, service=service,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        status_code=s.status.code, events=tuple(e.name for e in s.events),
                        start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano))
        with self.lock:
            self.spans.extend(spans)

    def received(self) -> list[ReceivedSpan]:
        """Every span received so far (bodies kept by ``defer`` decoded now)."""
        with self.lock:
            bodies, self._bodies = self._bodies, []
        for body in bodies:
            self._add(body)
        with self.lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.received() if s.trace_id == trace_id]

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
