"""The stable reason codes of rejected messages, defined once (PROTOCOL.md section 8 lists them all).

A code is a plain string on the wire and in the ``dead_letters`` table; :class:`Reason` members
compare equal to it, so producers and operators match on the text.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a message was rejected, by the stage that rejected it."""

    # decode: the bytes (protocol.codec)
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    TRAILING_BYTES = "trailing_bytes"
    TOO_DEEP = "too_deep"
    LIMIT_EXCEEDED = "limit_exceeded"
    INVALID_UTF8 = "invalid_utf8"
    NON_STR_KEY = "non_str_key"
    DUPLICATE_KEY = "duplicate_key"
    EXT_TYPE = "ext_type"
    NON_FINITE_FLOAT = "non_finite_float"
    NOT_A_MAP = "not_a_map"
    # envelope: the dramatiq envelope around the payload (protocol.messages, actors.guard)
    ENVELOPE_MISSING_FIELD = "envelope_missing_field"
    ENVELOPE_EXTRA_FIELD = "envelope_extra_field"
    ENVELOPE_BAD_TYPE = "envelope_bad_type"
    QUEUE_MISMATCH = "queue_mismatch"
    ACTOR_NOT_ALLOWED = "actor_not_allowed"
    OPTION_NOT_ALLOWED = "option_not_allowed"
    BAD_OPTION = "bad_option"
    # authenticity: who sent it (protocol/auth.py)
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    KEY_NOT_ALLOWED = "key_not_allowed"
    BAD_CAPABILITY = "bad_capability"
    # payload: the fields of one message type (protocol.messages)
    BAD_ARGS = "bad_args"
    UNSUPPORTED_VERSION = "unsupported_version"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    BAD_TYPE = "bad_type"
    BAD_VALUE = "bad_value"
    # coordinator: what the message asks for does not exist (coordinator/)
    UNKNOWN_WORKFLOW = "unknown_workflow"
    UNKNOWN_VERSION = "unknown_version"
    INVALID_PARAMS = "invalid_params"
    UNKNOWN_RUN = "unknown_run"
    UNKNOWN_STEP = "unknown_step"
    NO_DATA_KEY = "no_data_key"
    UNSTORABLE_VALUE = "unstorable_value"
    # processing: handling the message failed (actors.middleware.rejections)
    RETRIES_EXHAUSTED = "retries_exhausted"
    ACTOR_NOT_FOUND = "actor_not_found"
    FAILED = "failed"
