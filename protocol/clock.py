"""Time, read in one place. Code that decides takes a clock (``Clock``) as a parameter, so tests
move time by hand; these are the real clocks the defaults point at."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (the wall clock)."""
    return datetime.now(UTC)


def epoch_s() -> float:
    """Now, in seconds since the Unix epoch (the wall clock, as step results carry it)."""
    return time.time()


def as_utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime; a naive one (SQLite hands them back) was stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
