"""The dramatiq encoder of MiniFlow: msgpack through protocol.codec, failures as DecodeError."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.encoder import Encoder
from dramatiq.errors import DecodeError

from protocol import codec
from protocol.errors import DecodeFailed


class MsgpackEncoder(Encoder):
    """Encodes dramatiq envelopes as msgpack; every decode failure becomes dramatiq's DecodeError
    (whose text carries the reason code only, never the bytes)."""

    def encode(self, data: dict[str, Any]) -> bytes:
        return codec.pack(data)

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            return codec.unpack(data)
        except DecodeFailed as exc:
            raise DecodeError(f"undecodable message ({exc.code})", b"", exc) from None


def install() -> None:
    """Make msgpack the process-wide dramatiq encoder (every producer and worker must)."""
    if not isinstance(dramatiq.get_encoder(), MsgpackEncoder):
        dramatiq.set_encoder(MsgpackEncoder())
