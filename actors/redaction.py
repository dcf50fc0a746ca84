"""Keep payloads out of logs: dramatiq formats a message as ``actor(args...)`` in its log lines.

``install()`` wraps the process's log record factory once, so that any dramatiq Message in a
record's arguments is shown as ``actor[message_id]`` whatever handler later formats it, and
passwords in URLs are masked.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dramatiq.broker import MessageProxy
from dramatiq.message import Message

from miniflow.protocol.masking import mask_urls

_lock = threading.Lock()
_installed = False


def redact(value: Any) -> Any:
    if isinstance(value, (Message, MessageProxy)):
        return f"{value.actor_name}[{value.message_id}]"
    if isinstance(value, str):
        return mask_urls(value)
    return value


def redact_record(record: logging.LogRecord) -> None:
    if isinstance(record.args, tuple):
        record.args = tuple(redact(a) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: redact(v) for k, v in record.args.items()}
    if isinstance(record.msg, str):
        record.msg = mask_urls(record.msg)


def install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
