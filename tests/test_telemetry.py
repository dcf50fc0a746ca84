"""Span accounting (ops/telemetry.py): every span a process ends is exported, refused by the
collector, or dropped by the batch processor's full queue, and the process says how many were lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from miniflow.ops.telemetry import SpanCounts, Telemetry, _counting


class Gated(SpanExporter):
    """Takes every batch; the first one waits until ``release`` is set."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.exporting = threading.Event()
        self.release = threading.Event()
        self.result = result
        self.taken: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exporting.set()
        assert self.release.wait(30)
        self.taken += [s.name for s in spans]
        return self.result

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def provider_with(exporter: SpanExporter, queue: int) -> tuple[Telemetry, Any]:
    counts = SpanCounts()
    ended, counted = _counting(counts, exporter)
    provider = TracerProvider()
    provider.add_span_processor(ended)
    provider.add_span_processor(BatchSpanProcessor(counted, max_queue_size=queue, max_export_batch_size=queue,
                                                   schedule_delay_millis=60_000))
    return Telemetry(provider, counts), provider.get_tracer("test")


def test_spans_dropped_by_a_full_queue_are_counted_and_reported(caplog):
    exporter = Gated()
    telemetry, tracer = provider_with(exporter, queue=2)
    for i in range(2):
        tracer.start_span(f"s{i}").end()  # a full batch: the export thread takes both and waits
    assert exporter.exporting.wait(10)
    for i in range(2, 10):
        tracer.start_span(f"s{i}").end()  # two fit in the queue again; six do not
    exporter.release.set()
    with caplog.at_level(logging.INFO, "miniflow.telemetry"):
        telemetry.shutdown()
    counts = telemetry.counts
    assert (counts.ended, counts.exported, counts.failed, counts.dropped) == (10, 4, 0, 6)
    assert sorted(exporter.taken)[:2] == ["s0", "s1"]
    assert "tracing: 6 of 10 spans lost: 6 dropped (the span queue was full: raise OTEL_BSP_MAX_QUEUE_SIZE), " \
           "0 refused by the collector" in caplog.text


def test_spans_refused_by_the_collector_are_lost_too_and_none_lost_says_so(caplog):
    refused = Gated(SpanExportResult.FAILURE)
    refused.release.set()
    telemetry, tracer = provider_with(refused, queue=8)
    for i in range(3):
        tracer.start_span(f"s{i}").end()
    with caplog.at_level(logging.INFO, "miniflow.telemetry"):
        telemetry.shutdown()
    assert (telemetry.counts.failed, telemetry.counts.dropped) == (3, 0)
    assert "tracing: 3 of 3 spans lost: 0 dropped" in caplog.text

    fine = Gated()
    fine.release.set()
    telemetry, tracer = provider_with(fine, queue=8)
    tracer.start_span("one").end()
    caplog.clear()
    with caplog.at_level(logging.INFO, "miniflow.telemetry"):
        telemetry.shutdown()
    assert "tracing: 1 spans exported, none lost" in caplog.text
