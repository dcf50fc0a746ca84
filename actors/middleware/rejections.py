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
from dramatiq.middleware import Middleware

from protocol import codec
from protocol.errors import MessageRejected
from protocol.names import RECORD_DEAD_LETTER

from ..guard import Guard, Rejection

logger = logging.getLogger("miniflow.rejections")


class Rejections(Middleware):
    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        exception = getattr(message, "_exception", None)
        if isinstance(exception, MessageRejected):
            code, detail = exception.code, exception.detail
        elif exception is not None:
            code = "actor_not_found" if type(exception).__name__ == "ActorNotFound" else "retries_exhausted"
            first = (str(exception).strip().splitlines() or [""])[0][:300]
            detail = f"{type(exception).__name__}: {first}" if code != "actor_not_found" else \
                f"no actor {message.actor_name!r} here"
        else:
            code, detail = "failed", "message failed without an exception"
        if message.actor_name == RECORD_DEAD_LETTER:
            logger.error("could not archive a dead-letter report %s: %s (%s)", message.message_id, code, detail)
            return
        try:
            raw = message.encode()[:codec.RAW_KEEP]
        except Exception:
            raw = b""
        self.guard.report(broker, message.queue_name,
                          Rejection(code, detail, message.message_id, message.actor_name, raw))
