"""Logging set-up: a configurable level, text or JSON lines, and redaction.

dramatiq logs a message as ``actor(args...)``, which would put payloads (and secret params) in
the log. The redaction filter rewrites any dramatiq message in a record's arguments to
``actor[message_id]`` and masks passwords in URLs, on every handler.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from dramatiq.broker import MessageProxy
from dramatiq.message import Message

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]+)@", re.I)


def mask_secrets(text: str) -> str:
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def _redact(value: Any) -> Any:
    if isinstance(value, (Message, MessageProxy)):
        return f"{value.actor_name}[{value.message_id}]"
    if isinstance(value, str):
        return mask_secrets(value)
    return value


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact(v) for k, v in record.args.items()}
        if isinstance(record.msg, str):
            record.msg = mask_secrets(record.msg)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(entry)


def configure(level: str = "WARNING", fmt: str = "text", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
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
