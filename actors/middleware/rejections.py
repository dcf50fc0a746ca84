"""Reports every message dramatiq dead-letters after it reached an actor.

Bodies that fail the guard are handled in the consumer (actors/guard.py). This middleware covers
the rest: a payload an actor rejected (:class:`MessageRejected`, e.g. an unknown workflow), an
infrastructure failure that exhausted dramatiq's retries, an actor that is not defined here. Each
is reported for archiving with a reason code; the payload never reaches the log.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware

from miniflow.protocol import codec
from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import MessageRejected
from miniflow.protocol.names import RECORD_DEAD_LETTER

from ..guard import Guard, Rejection

logger = logging.getLogger("miniflow.rejections")


class Rejections(Middleware):
    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        exception = getattr(message, "_exception", None)
        if isinstance(exception, MessageRejected):
            code, detail = exception.code, exception.detail
        elif isinstance(exception, ActorNotFound):
            code, detail = Reason.ACTOR_NOT_FOUND, f"no actor {message.actor_name!r} here"
        elif exception is not None:
            first = (str(exception).strip().splitlines() or [""])[0][:300]
            code, detail = Reason.RETRIES_EXHAUSTED, f"{type(exception).__name__}: {first}"
        else:
            code, detail = Reason.FAILED, "message failed without an exception"
        about_report = False
        if message.actor_name == RECORD_DEAD_LETTER:
            payload = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
            about_report = bool(payload.get("about_report"))
        try:
            raw = message.encode()[:codec.RAW_KEEP]
        except Exception:  # noqa: BLE001 - the report goes out without the raw copy
            raw = b""
        self.guard.report(broker, message.queue_name,
                          Rejection(code, detail, message.message_id, message.actor_name, raw, about_report))
