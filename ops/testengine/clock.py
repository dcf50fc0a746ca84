"""The virtual clock of the embedded test mode: time moves only when the engine moves it.

While any message is being handled, time stands still; when everything is idle (no message queued
or in hand but those of steps sleeping on this clock), the engine jumps the clock to the next thing
due: a delayed message (a retry's backoff), a sleeping stub's end, a cron tick, a scheduled fault.
So a 10-minute backoff costs no wall time, and the order of events is that of real time.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta


class VirtualClock:
    def __init__(self, start: datetime) -> None:
        self._now = start
        self._cond = threading.Condition()
        self._timers: list[tuple[datetime, int, Callable[[], None]]] = []
        self._sleeping: list[datetime] = []
        self._seq = itertools.count()
        self.pid = os.getpid()
        self._closed = False

    def now(self) -> datetime:
        return self._now

    @property
    def sleepers(self) -> int:
        with self._cond:  # a sleeper whose time has come is awake, even before its thread runs
            return sum(1 for due in self._sleeping if due > self._now)

    def call_at(self, due: datetime, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._timers, (due, next(self._seq), fn))

    def sleep(self, seconds: float) -> None:
        """Block this thread until the clock has moved ``seconds`` on (at once in a forked child,
        where nothing moves the clock)."""
        if seconds <= 0 or os.getpid() != self.pid:
            return
        with self._cond:
            due = self._now + timedelta(seconds=seconds)
            self._sleeping.append(due)
            try:
                while self._now < due and not self._closed:
                    self._cond.wait(1.0)
            finally:
                self._sleeping.remove(due)

    def close(self) -> None:
        """Wake every sleeper at once (the case is over)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def next_due(self) -> datetime | None:
        with self._cond:
            dues = [d for d in self._sleeping if d > self._now] + ([self._timers[0][0]] if self._timers else [])
        return min(dues) if dues else None

    def advance_to(self, when: datetime) -> None:
        """Move the clock forward to ``when``, running the timers due by then in order."""
        while True:
            with self._cond:
                if self._timers and self._timers[0][0] <= when:
                    due, _, fn = heapq.heappop(self._timers)
                    self._now = max(self._now, due)
                else:
                    self._now = max(self._now, when)
                    self._cond.notify_all()
                    return
                self._cond.notify_all()
            fn()
