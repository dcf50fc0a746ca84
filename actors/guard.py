"""The gate every consumed body passes before dramatiq sees it.

dramatiq's own consumers nack an undecodable body silently (and log its bytes). MiniFlow's
consumers check each body first: it must decode under the codec's limits, be a well-formed
envelope, name the queue it arrived on, address an actor allowed on that queue (outside
producers may only reach the ingress actors), carry only the options allowed there, and (with
message authentication on) be signed by a sender that may send it (protocol/auth.py). A body that
fails is dead-lettered, reported to the results role for archiving in Postgres with its reason
code, and logged by message id only.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import dramatiq

from miniflow.protocol import codec
from miniflow.protocol.auth import Verifier
from miniflow.protocol.codes import Reason
from miniflow.protocol.envelope import check_envelope, envelope, payload_of
from miniflow.protocol.errors import DecodeFailed, MessageRejected
from miniflow.protocol.messages import DeadLetterReport
from miniflow.protocol.names import RECORD_DEAD_LETTER, QueueNames
from miniflow.protocol.options import check_options

from .encoder import MsgpackEncoder
from .metrics import NULL, Metrics

logger = logging.getLogger("miniflow.rejections")


def node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Rejection:
    code: str
    detail: str
    message_id: str | None
    actor: str | None
    raw: bytes
    about_report: bool = False  # the rejected message is a report that was itself about a rejected report


class Guard:
    """Inspects raw bodies for a namespace and reports rejections through the broker."""

    def __init__(self, names: QueueNames, verifier: Verifier | None = None) -> None:
        self.names = names
        self.verifier = verifier  # None: message authentication is off (MINIFLOW_AUTH=off)
        self.rejected = 0
        self.metrics: Metrics = NULL  # the node sets its own when metrics are on

    def inspect(self, queue_name: str, body: bytes, headers: dict[str, Any] | None = None) -> Rejection | None:
        try:
            fields = codec.unpack(body)
        except DecodeFailed as exc:
            return Rejection(exc.code, exc.detail, None, None, exc.raw)
        message_id = fields.get("message_id") if isinstance(fields.get("message_id"), str) else None
        actor = fields.get("actor_name") if isinstance(fields.get("actor_name"), str) else None
        try:
            self._check(queue_name, fields)
            if self.verifier is not None:
                self.verifier.check(fields, headers, body)
        except MessageRejected as exc:
            # "About a rejected report" stops a loop of reports (say a core node whose key the
            # others no longer accept). A forger may set it too: then only the log line and the XQ
            # keep the forged report, which has no effect either way.
            args = fields.get("args")
            nested = actor == RECORD_DEAD_LETTER and isinstance(args, list) and len(args) == 1 \
                and isinstance(args[0], dict) and args[0].get("about_report") is True
            return Rejection(exc.code, exc.detail, message_id, actor, bytes(body[:codec.RAW_KEEP]), nested)
        current = dramatiq.get_encoder()
        if isinstance(current, MsgpackEncoder):
            current.remember(body, fields)  # dramatiq's decode of this body, next, is then free
        return None

    def _check(self, queue_name: str, fields: dict[str, Any]) -> None:
        """MessageRejected unless the envelope is well formed, names the queue it arrived on and an
        actor allowed there, and carries only the options allowed there."""
        check_envelope(fields)
        payload_of(fields["args"], fields["kwargs"])
        if fields["queue_name"] != queue_name:
            raise MessageRejected(Reason.QUEUE_MISMATCH, f"envelope names queue {fields['queue_name'][:100]!r} but "
                                  f"arrived on {queue_name!r}", "queue_name")
        if fields["actor_name"] not in self.names.allowed_actors(queue_name):
            raise MessageRejected(Reason.ACTOR_NOT_ALLOWED, f"actor {fields['actor_name'][:100]!r} may not be "
                                  f"addressed on queue {queue_name!r}", "actor_name")
        check_options(fields["options"], delayed=queue_name.endswith(".DQ"),
                      step_queue=self.names.is_step_queue(queue_name))

    def report(self, broker: dramatiq.Broker, queue_name: str, rejection: Rejection) -> None:
        """Log the rejection (id and reason, never the payload) and send it to be archived."""
        self.rejected += 1
        self.metrics.rejected(rejection.code)
        logger.warning("rejected message %s on %s: %s (%s)", rejection.message_id or "<no id>",
                       queue_name, rejection.code, rejection.detail)
        if rejection.about_report:
            # A report about a rejected report was rejected in turn: stop here (the log line and the
            # XQ keep it), or two bad reports could feed each other for ever.
            logger.error("not archiving the rejection of report %s: it was about a rejected report already",
                         rejection.message_id or "<no id>")
            return
        report = DeadLetterReport(queue=queue_name, code=rejection.code, detail=rejection.detail,
                                  message_id=rejection.message_id, actor=rejection.actor,
                                  raw=rejection.raw, node=node_name(),
                                  about_report=rejection.actor == RECORD_DEAD_LETTER)
        try:
            broker.enqueue(as_message(envelope(self.names.results, RECORD_DEAD_LETTER, report.to_payload())))
        except Exception:  # noqa: BLE001 - on a consumer thread: log it, never let it stop consuming
            logger.exception("could not report rejected message %s for archiving; it is in %s.XQ",
                             rejection.message_id or "<no id>", queue_name)


def as_message(fields: dict[str, Any]) -> dramatiq.Message[Any]:
    fields = dict(fields)
    fields["args"] = tuple(fields["args"])
    return dramatiq.Message(**fields)
