"""Large messages take turns in a coordinator or results process, so that the memory they need at
once stays bounded.

A result or a start that carries a large value (a step output just under the artifact threshold,
big params) is copied several times while it is handled: decoded, serialised for its row, quoted
into the statement, put into the next step's message and that message's outbox row. With 16
threads each handling one such message at the same time a process grew by about 45 MB (a burst of
100 runs of 250 KiB outputs took a coordinator from 98 to 143 MB). Here the bodies of at least
``LARGE_BYTES`` that are handled at the same time share a budget of ``BUDGET_BYTES``: in effect one
body near the artifact threshold at a time, or four of 64 KiB. A thread whose body does not fit
waits, in arrival order, for room; a body larger than the whole budget (a start with 1 MiB of
params) is handled alone. Small bodies never wait, and neither does a thread once it holds its
turn: the group commit of a run (``combiner``) applies waiting threads' results without turns.
The price is paid only by bursts of large bodies: the burst above peaked at 110-116 MB and took
3.5-4.7 s instead of 2.9-3.2 s with a budget of 1 MiB (a budget of 512 KiB: 120 MB).

Executors do not take turns: a step runs for as long as it likes, and it owns its memory.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

LARGE_BYTES = 64 * 1024
BUDGET_BYTES = 256 * 1024
WAKE_S = 1.0


class Turns:
    """A byte budget for the large bodies handled at the same time, admitted in arrival order (a
    body over the budget is not passed for ever by a stream of smaller ones)."""

    def __init__(self, budget: int = BUDGET_BYTES, large: int = LARGE_BYTES, *,
                 counted: Callable[[bool], None] = lambda waited: None) -> None:
        self.budget = budget
        self.large = large
        self.counted = counted  # told of each large body as it enters: whether it waited
        self._cond = threading.Condition()
        # thread -> bytes it holds, and thread -> its place in the line. A thread is in one turn at
        # most, so what it finds of its own when it comes for the next one was left there by an
        # exception raised into it (dramatiq's time limit) while it was leaving: it clears that
        # first, and a line stays blocked no longer than that thread's next message (in a process
        # with no other traffic, until some comes). A turn's own clean-up removes only its own
        # entries (by arrival number), even when it runs late, from another thread.
        self._holders: dict[int, tuple[int, int]] = {}  # thread -> (bytes, its arrival number)
        self._line: dict[int, int] = {}
        self._arrivals = 0
        self.waits = 0  # how many bodies had to wait for their turn

    def in_use(self) -> int:
        with self._cond:
            return sum(held for held, _ in self._holders.values())

    @contextlib.contextmanager
    def turn(self, size: int) -> Iterator[None]:
        """Hold a share of the budget while the block runs (none for a small body)."""
        me = threading.get_ident()
        if me in self._holders or me in self._line:
            self._leave(me, None)
        if size < self.large:
            yield
            return
        waited = False
        mine = -1
        try:
            with self._cond:
                self._arrivals += 1
                mine = self._line[me] = self._arrivals
                if not self._may_enter(me, size):
                    self.waits += 1
                    waited = True
                    while not self._may_enter(me, size):
                        self._cond.wait(WAKE_S)  # in Python now and then: an interruption lands
                self._holders[me] = (size, mine)
                del self._line[me]
                self._cond.notify_all()  # the next in line may fit beside it
            self.counted(waited)
            yield
        finally:
            self._leave(me, mine)

    def _leave(self, me: int, mine: int | None) -> None:
        """Remove ``me``'s entries of the turn ``mine`` (None: whatever they are)."""
        with self._cond:
            left = False
            if me in self._holders and mine in (None, self._holders[me][1]):
                del self._holders[me]
                left = True
            if me in self._line and mine in (None, self._line[me]):
                del self._line[me]
                left = True
            if left:
                self._cond.notify_all()

    def _may_enter(self, me: int, size: int) -> bool:
        if min(self._line, key=self._line.__getitem__) != me:  # first come, first in
            return False
        used = sum(held for held, _ in self._holders.values())
        return used == 0 or used + size <= self.budget
