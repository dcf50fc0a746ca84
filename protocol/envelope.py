"""The envelope of every MiniFlow message: dramatiq's seven keys in a msgpack map.

``args`` hold exactly one payload map (the message types of ``messages``) and ``kwargs`` are empty.
"""

from __future__ import annotations

import uuid
from typing import Any

from .clock import epoch_s
from .codes import Reason
from .errors import MessageRejected

ENVELOPE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "queue_name": str,
    "actor_name": str,
    "args": list,
    "kwargs": dict,
    "options": dict,
    "message_id": str,
    "message_timestamp": int,
}

MAX_MESSAGE_ID_LEN = 192
MAX_QUEUE_NAME = 255
MAX_TIMESTAMP_MS = 4_102_444_800_000  # 2100-01-01


def check_envelope(envelope: dict[str, Any]) -> None:
    """Check the dramatiq envelope: exactly the seven keys, each of its type."""
    for key, kind in ENVELOPE_FIELDS.items():
        if key not in envelope:
            raise MessageRejected(Reason.ENVELOPE_MISSING_FIELD, f"envelope has no {key!r}", key)
        value = envelope[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise MessageRejected(Reason.ENVELOPE_BAD_TYPE, f"envelope {key!r} must be {kind_name(kind)}", key)
    extra = sorted(set(envelope) - set(ENVELOPE_FIELDS))
    if extra:
        raise MessageRejected(Reason.ENVELOPE_EXTRA_FIELD, f"envelope has unknown keys {extra}", extra[0])
    if not 0 < len(envelope["message_id"]) <= MAX_MESSAGE_ID_LEN:
        raise MessageRejected(Reason.ENVELOPE_BAD_TYPE, f"envelope 'message_id' must be 1-{MAX_MESSAGE_ID_LEN} "
                              "characters", "message_id")
    if len(envelope["queue_name"]) > MAX_QUEUE_NAME or len(envelope["actor_name"]) > MAX_QUEUE_NAME:
        raise MessageRejected(Reason.ENVELOPE_BAD_TYPE, f"envelope 'queue_name' and 'actor_name' must be at most "
                              f"{MAX_QUEUE_NAME} characters", "queue_name")
    if not 0 <= envelope["message_timestamp"] <= MAX_TIMESTAMP_MS:
        raise MessageRejected(Reason.ENVELOPE_BAD_TYPE, "envelope 'message_timestamp' must be milliseconds since the "
                              "epoch, before the year 2100", "message_timestamp")


def payload_of(args: Any, kwargs: Any) -> dict[str, Any]:
    """The single payload map of a message's args (kwargs must be empty)."""
    if kwargs:
        raise MessageRejected(Reason.BAD_ARGS, "kwargs must be empty", "kwargs")
    if not isinstance(args, (list, tuple)) or len(args) != 1 or not isinstance(args[0], dict):
        raise MessageRejected(Reason.BAD_ARGS, "args must hold exactly one payload map", "args")
    return args[0]


def kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", list: "an array", dict: "a map", bool: "a boolean",
             float: "a number", type(None): "nil", bytes: "binary"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def new_message_id() -> str:
    return str(uuid.uuid4())


def envelope(queue_name: str, actor_name: str, payload: dict[str, Any], *,
             message_id: str | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dramatiq envelope around one payload map."""
    return {
        "queue_name": queue_name,
        "actor_name": actor_name,
        "args": [payload],
        "kwargs": {},
        "options": dict(options or {}),
        "message_id": message_id or new_message_id(),
        "message_timestamp": int(epoch_s() * 1000),
    }
