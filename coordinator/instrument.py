"""Hooks the coordinator calls at its decisions. The default does nothing, which keeps
OpenTelemetry out of the coordinator: the actors layer plugs tracing in (``TracingInstrument``)."""

from __future__ import annotations

from typing import Any


class Instrument:
    """``outgoing`` returns message options for a message about to be sent (the trace context of a
    span for the send); ``run_finished`` marks the end of a run, after the commit that ends it."""

    def outgoing(self, actor_name: str, queue_name: str, attributes: dict[str, Any]) -> dict[str, Any]:
        return {}

    def run_finished(self, run_id: str, workflow: str, status: str, error: str | None) -> None:
        return None
