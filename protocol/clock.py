"""Time, read in one place. Code that decides takes a clock (``Clock``) as a parameter, so tests
move time by hand; these are the real clocks the defaults point at."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
# The test engine's virtual clock (ops/testengine), when one is in use in this process: then every
# clock of MiniFlow reads it, so backoffs, timeouts and cron ticks take no real time.
_virtual: Clock | None = None


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (the wall clock, or the test engine's virtual clock)."""
    return datetime.now(UTC) if _virtual is None else _virtual()


def epoch_s() -> float:
    """Now, in seconds since the Unix epoch (the wall clock, as step results carry it)."""
    return time.time() if _virtual is None else _virtual().timestamp()


def use_virtual_clock(clock: Clock | None) -> None:
    """Make every clock of this process read ``clock`` (None: the wall clock again). Only the test
    engine does this, in a process of its own."""
    global _virtual
    _virtual = clock


def as_utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime; a naive one (SQLite hands them back) was stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
