"""The dramatiq encoder of MiniFlow: msgpack through protocol.codec, failures as DecodeError."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.encoder import Encoder
from dramatiq.errors import DecodeError

from miniflow.protocol import codec
from miniflow.protocol.errors import DecodeFailed


class MsgpackEncoder(Encoder):
    """Encodes dramatiq envelopes as msgpack; every decode failure becomes dramatiq's DecodeError
    (whose text carries the reason code only, never the bytes).

    The consumer's guard decodes each body before dramatiq does; it hands the result over with
    ``remember`` so that dramatiq's decode of that same bytes object (on the same thread) is free."""

    def __init__(self) -> None:
        self._local = threading.local()

    def remember(self, body: bytes, fields: dict[str, Any]) -> None:
        self._local.body, self._local.fields = body, fields

    def encode(self, data: dict[str, Any]) -> bytes:
        return codec.pack(data)

    def decode(self, data: bytes) -> dict[str, Any]:
        if getattr(self._local, "body", None) is data:
            fields: dict[str, Any] = self._local.fields
            self._local.body = self._local.fields = None
            return fields
        try:
            return codec.unpack(data)
        except DecodeFailed as exc:
            raise DecodeError(f"undecodable message ({exc.code})", b"", exc) from None  # type: ignore[no-untyped-call]


def install() -> None:
    """Make msgpack the process-wide dramatiq encoder (every producer and worker must)."""
    if not isinstance(dramatiq.get_encoder(), MsgpackEncoder):
        dramatiq.set_encoder(MsgpackEncoder())
