"""The closed envelope: which message options a MiniFlow queue accepts, and their bounds.

dramatiq reads behaviour from ``options`` (``throws``, ``max_retries``, ``min_backoff``, ``eta``,
``time_limit``, ``pipe_target``, ...): taken from a message, they let whoever can publish change
how a worker treats it (stop its threads, hold it in memory for ever, retry it in a tight loop).
Only the options below pass; any other is rejected with ``option_not_allowed``, a value out of its
bounds with ``bad_option``. dramatiq's retry behaviour is set by MiniFlow's actors, never by a
message.

    option            where                          what
    traceparent       every queue                    W3C trace context (text, <= 512)
    tracestate        every queue                    W3C trace state (text, <= 512)
    broker_priority   every queue                    AMQP priority 0-9 dramatiq re-publishes with
    retries           every queue                    dramatiq's count of infrastructure retries
    traceback         every queue                    dramatiq's note of the last retry's error (text)
    requeue_timestamp every queue                    when dramatiq re-queued it (ms)
    eta               delay queues (``.DQ``) only    when a delayed message is due (ms), <= 2 days ahead
    time_limit        step queues only               the step's time limit (ms), <= 1 day
    declines          step queues only               how often executors without the task handed it back
    mf_sig            every queue                    MiniFlow's signature of an internal message
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .clock import epoch_s
from .codes import Reason
from .errors import MessageRejected

MAX_TEXT = 512
MAX_TRACEBACK = 64 * 1024
MAX_DELAY_MS = 2 * 24 * 3600 * 1000  # MiniFlow's own delays: backoffs capped at a day, declines at 30 s
MAX_TIME_LIMIT_MS = 24 * 3600 * 1000
MAX_RETRIES = 1000
MAX_DECLINES = 100_000


def _text(limit: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and len(v) <= limit


def _int(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _eta(value: Any) -> bool:
    now_ms = int(epoch_s() * 1000)
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= now_ms + MAX_DELAY_MS


_EVERYWHERE: dict[str, Callable[[Any], bool]] = {
    "traceparent": _text(MAX_TEXT), "tracestate": _text(MAX_TEXT), "broker_priority": _int(0, 9),
    "retries": _int(0, MAX_RETRIES), "traceback": _text(MAX_TRACEBACK), "requeue_timestamp": _int(0, 2**53),
    "mf_sig": _text(MAX_TEXT),
}
_STEPS: dict[str, Callable[[Any], bool]] = {"time_limit": _int(1, MAX_TIME_LIMIT_MS), "declines": _int(0, MAX_DECLINES)}


def check_options(options: dict[str, Any], *, delayed: bool, step_queue: bool) -> None:
    """MessageRejected unless every option is one MiniFlow allows on this queue, within its bounds."""
    for name, value in options.items():
        check = _EVERYWHERE.get(name) or (_STEPS.get(name) if step_queue else None) or \
            (_eta if delayed and name == "eta" else None)
        if check is None:
            where = "a delay queue" if delayed else "this queue"
            raise MessageRejected(Reason.OPTION_NOT_ALLOWED, f"message option {str(name)[:40]!r} is not allowed on "
                                  f"{where} (MiniFlow sets retry and delivery behaviour itself)", "options")
        if not check(value):
            raise MessageRejected(Reason.BAD_OPTION, f"message option {name!r} has a value out of its bounds",
                                  "options")
