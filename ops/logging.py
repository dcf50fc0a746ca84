"""Logging set-up: a configurable level, text or JSON lines, and redaction.

dramatiq logs a message as ``actor(args...)``, which would put payloads (and secret params) in
the log. The redaction filter rewrites any dramatiq message in a record's arguments to
``actor[message_id]`` and masks passwords in URLs, on every handler.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from miniflow.actors.outages import OUTAGES, OutageFilter
from miniflow.actors.redaction import install as install_redaction
from miniflow.actors.redaction import redact_record
from miniflow.protocol.masking import mask_urls


class RedactingFilter(logging.Filter):
    """Redacts records on a handler too (for records made before the factory was installed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = mask_urls(self.formatException(record.exc_info))
        return json.dumps(entry)


def configure(level: str = "WARNING", fmt: str = "text", stream: Any = None) -> None:
    install_redaction()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.addFilter(OutageFilter(OUTAGES, verbose=level == "DEBUG"))  # connection noise -> one line per outage
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLevelName(level)))
