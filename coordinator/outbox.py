"""The outbox: messages a state change implies, written in the same transaction as the change.

The caller publishes them once the transaction has committed (``actors.relay``); a sweeper sends
rows a crashed process left behind, and consumers dedupe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from miniflow.persistence import OutboxRow
from miniflow.persistence import repository as repo
from miniflow.protocol import codec
from miniflow.protocol.envelope import envelope
from miniflow.protocol.errors import EncodeFailed

from .instrument import Instrument


@dataclass(frozen=True)
class Outgoing:
    """A message committed to the outbox, to publish once the transaction has committed."""

    message_id: str
    queue_name: str
    body: bytes
    delay_ms: int | None = None
    envelope: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # in-memory copy of body


class Outbox:
    """Collects the messages of one transaction and writes them to the outbox table."""

    def __init__(self, conn: Connection, now: datetime, instrument: Instrument | None = None) -> None:
        self.conn = conn
        self.now = now
        self.instrument = instrument or Instrument()
        self.items: list[Outgoing] = []

    def add(self, queue_name: str, actor_name: str, payload: dict[str, Any], *,
            options: dict[str, Any] | None = None, delay_ms: int | None = None,
            attributes: dict[str, Any] | None = None) -> None:
        """Queue one message; EncodeFailed (and nothing queued) when it is over the wire limit."""
        options = dict(options or {})
        options.update(self.instrument.outgoing(actor_name, queue_name, attributes or {}))
        body = envelope(queue_name, actor_name, payload, options=options)
        packed = codec.pack(body)
        if len(packed) > codec.MAX_MESSAGE_BYTES:
            raise EncodeFailed(f"{actor_name} message", f"{len(packed)} bytes, over the "
                               f"{codec.MAX_MESSAGE_BYTES}-byte message limit")
        self.items.append(Outgoing(body["message_id"], queue_name, packed, delay_ms, body))

    def mark(self) -> int:
        """A position to roll back to with :meth:`discard_since`."""
        return len(self.items)

    def discard_since(self, mark: int) -> None:
        del self.items[mark:]

    def flush(self) -> list[Outgoing]:
        """Write the queued messages to the outbox table; returns them, to publish after commit."""
        repo.add_outbox(self.conn, [OutboxRow(o.message_id, o.queue_name, o.body, self.now, o.delay_ms)
                                    for o in self.items])
        return self.items
