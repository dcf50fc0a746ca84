"""Which run, step and attempt a log line is about: a per-message log context.

The handlers and the executor already tell the tracing middleware what a message is about
(``annotate(run_id=..., step=..., attempt=...)``); ``annotate`` also binds the known fields here,
and the Tracing middleware gives every message a fresh context and drops it when the message ends,
so a worker thread's next message never inherits the last one's ids. ops/logging.py puts the bound
fields (and the current trace and span ids) on every log line.

Only the identifying fields below are ever kept, each cut to MAX_VALUE_LEN characters: never
params, outputs, configs or secrets (anything else passed to ``bind`` is ignored).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

FIELDS = ("run_id", "workflow", "step", "attempt", "node", "task")
MAX_VALUE_LEN = 200  # characters of one field kept
MAX_FAILURE_LEN = 500  # characters of a failed step's (masked) message logged

Value = str | int
_EMPTY: Mapping[str, Value] = MappingProxyType({})
_fields: ContextVar[Mapping[str, Value]] = ContextVar("miniflow_log_context", default=_EMPTY)
_KNOWN = frozenset(FIELDS)
ContextToken = Token[Mapping[str, Value]]


def _bounded(value: Any) -> Value:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value)[:MAX_VALUE_LEN]


def bind(**fields: Any) -> None:
    """Add the known fields (None values skipped, others ignored) to the current message's context."""
    known = {k: _bounded(v) for k, v in fields.items() if k in _KNOWN and v is not None}
    if known:
        _fields.set(MappingProxyType({**_fields.get(), **known}))


def current() -> Mapping[str, Value]:
    """The fields bound now (read-only), in no particular order."""
    return _fields.get()


def clear() -> None:
    """Forget every field (the end of a message)."""
    _fields.set(_EMPTY)


def begin() -> ContextToken:
    """A fresh, empty context for a message starting now; hand the token to ``end``."""
    return _fields.set(_EMPTY)


def end(token: ContextToken | None) -> None:
    """The context as it was before ``begin`` (empty, unless messages nest); empty if that fails."""
    if token is None:
        clear()
        return
    try:
        _fields.reset(token)
    except (ValueError, RuntimeError):  # another context, or already used: never keep stale ids
        clear()


def log_step_failure(logger: logging.Logger, error_type: str, message: str) -> None:
    """Log a failed step attempt at WARNING: ``step failed: <error_type>: <message>``.

    ``message`` must already be masked (mask_values) by the caller; it is cut here to
    MAX_FAILURE_LEN characters (after masking: a cut could split a secret). A leading
    ``<error_type>: `` in it is not repeated. JSON lines also carry ``error_type`` as a field."""
    error_type = str(error_type)[:MAX_VALUE_LEN]
    text = str(message)
    if text.startswith(f"{error_type}: "):
        text = text[len(error_type) + 2:]
    logger.warning("step failed: %s: %s", error_type, text[:MAX_FAILURE_LEN], extra={"error_type": error_type},
                   stacklevel=2)
