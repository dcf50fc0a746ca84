"""Logging set-up: a configurable level, text or JSON lines, and redaction.

dramatiq logs a message as ``actor(args...)``, which would put payloads (and secret params) in
the log. The redaction filter rewrites any dramatiq message in a record's arguments to
``actor[message_id]`` and masks passwords in URLs, on every handler.

Every line says what it is about where that is known: the run, workflow, step, attempt, node and
task bound for the message being handled (actors/logcontext.py) and the current trace and span ids,
so a log search leads to the trace and back (docs/logging.md). JSON lines carry them as fields; text
lines end with `` run=<id> step=<name>#<attempt>``. Text lines show control characters (newlines
included) of a message as visible escapes, so a value from a message cannot forge or recolour lines.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

from miniflow.actors import logcontext
from miniflow.actors.outages import OUTAGES, OutageFilter
from miniflow.actors.redaction import install as install_redaction
from miniflow.actors.redaction import redact_record
from miniflow.protocol.masking import mask_urls

from .terminal import escape_controls

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Redacts records on a handler too (for records made before the factory was installed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def trace_ids() -> tuple[str, str] | None:
    """The current span's (trace id, span id) in hex, if there is a valid one."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def _exc_type(record: logging.LogRecord) -> str | None:
    exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
    return type(exc).__name__ if exc is not None else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then what applies of run_id, workflow,
    step, attempt, node, task, trace_id, span_id, error_type, exc_type and exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        context = logcontext.current()
        entry.update((k, context[k]) for k in logcontext.FIELDS if k in context)
        ids = trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        error_type = getattr(record, "error_type", None)
        if error_type is not None:
            entry["error_type"] = str(error_type)[:logcontext.MAX_VALUE_LEN]
        if record.exc_info:
            exc_type = _exc_type(record)
            if exc_type is not None:
                entry["exc_type"] = exc_type
            entry["exception"] = mask_urls(self.formatException(record.exc_info))
        return json.dumps(entry)


def escape_line(text: str) -> str:
    """``text`` on one line: control characters, newlines included, as visible escapes."""
    return escape_controls(text).replace("\n", "\\n")


def context_suffix(context: Mapping[str, logcontext.Value]) -> str:
    """`` run=<id> step=<name>#<attempt>`` of what a context holds (escaped), or ''."""
    parts = []
    if "run_id" in context:
        parts.append(f"run={context['run_id']}")
    if "step" in context:
        attempt = f"#{context['attempt']}" if "attempt" in context else ""
        parts.append(f"step={context['step']}{attempt}")
    return escape_line(" " + " ".join(parts)) if parts else ""


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>[ run=<id> step=<name>#<attempt>]``; the message and the
    context on one line with control characters escaped (a traceback keeps its line breaks only)."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_line(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record) + context_suffix(logcontext.current())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + escape_controls(mask_urls(record.exc_text))
        if record.stack_info:
            line += "\n" + escape_controls(self.formatStack(record.stack_info))
        return line


def configure(level: str = "WARNING", fmt: str = "text", stream: Any = None) -> None:
    install_redaction()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.addFilter(OutageFilter(OUTAGES, verbose=level == "DEBUG"))  # connection noise -> one line per outage
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLevelName(level)))
