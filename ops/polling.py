"""Waiting for a condition with a deadline: the one poll loop MiniFlow's faces and tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from miniflow.protocol.errors import WaitTimedOut

T = TypeVar("T")


def poll_until(check: Callable[[], T | None], *, timeout: float | None, interval: float = 0.1,
               what: str = "a condition", state: Callable[[], str | None] | None = None) -> T:
    """Call ``check`` until it returns something other than None (or False); return that.

    Past ``timeout`` seconds (never when None) raise WaitTimedOut naming ``what``, and the last
    ``state()`` when given. ``check`` runs at least once, even with a zero timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if deadline is not None and time.monotonic() >= deadline:
            assert timeout is not None
            raise WaitTimedOut(what, timeout, state() if state is not None else None)
        time.sleep(interval)
