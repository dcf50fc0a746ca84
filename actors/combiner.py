"""Group commit per run: results of one run that arrive together are recorded in one transaction.

Every result of a run locks the run's row until its transaction commits, so the results of one
wide run (a fan-out of 1,000 steps) queue up on that lock, one commit after another, while the
other worker threads wait in Postgres. Here a thread that finds another thread already working on
the same run does not wait for the lock: it hands its result to that run's line and sleeps. When
the working thread has committed, it wakes every thread of the batch it took and gives the line
that formed meanwhile, as the next batch, to the first thread in it. Each message is still acked
by its own thread, after the commit that recorded it (a crash before the commit redelivers it), and
each thread works on at most one batch (its own result's, or the one handed to it).

A batch that fails as a whole (one forged result, a value the database refuses) is applied again
one item at a time, so each message meets its own error and no other message is lost with it.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
MOST = 64  # items applied in one batch (one transaction); the rest go in the next


@dataclass(eq=False)
class Entry(Generic[T]):
    """One submitted item, the context of the thread that submitted it (its trace span, its log
    fields: the item is applied in it, by whichever thread applies it), and how it went."""

    item: T
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    batch: list[Entry[T]] | None = None  # handed over: this entry's thread applies this batch


Apply = Callable[[Sequence[Entry[T]]], Sequence[BaseException | None]]


class Combiner(Generic[T]):
    """Items of one key (a run id) are applied by one thread at a time, in batches of up to ``most``.

    ``apply`` gets the entries of a batch and returns, in order, each one's error (None: applied).
    It is called with no lock held; only one call at a time per key."""

    def __init__(self, apply: Apply[T], *, most: int = MOST) -> None:
        self.apply = apply
        self.most = most
        self._lock = threading.Lock()
        self._lines: dict[Hashable, list[Entry[T]]] = {}  # a key being applied: the entries waiting for it
        self.batches = 0  # counters for the metrics and tests: batches applied, items in them
        self.items = 0

    def submit(self, key: Hashable, item: T) -> None:
        """Apply ``item`` (now, or in a batch with others of ``key``); raises its error, if it had one."""
        entry: Entry[T] = Entry(item)
        with self._lock:
            line = self._lines.get(key)
            if line is None:
                self._lines[key] = []
                entry.batch = [entry]
            else:
                line.append(entry)
        if entry.batch is None:
            entry.done.wait()
        if entry.batch is not None:  # this thread applies a batch: its own, or one handed to it
            self._work(key, entry.batch)
        if entry.error is not None:
            raise entry.error

    def _work(self, key: Hashable, batch: list[Entry[T]]) -> None:
        errors: Sequence[BaseException | None] = ()
        try:
            errors = self.apply(batch)
        except BaseException as exc:  # noqa: BLE001 - the batch's own threads raise it (and retry their messages)
            errors = [exc] * len(batch)
        finally:
            with self._lock:
                line = self._lines[key]
                following, rest = line[:self.most], line[self.most:]
                if following:
                    self._lines[key] = rest
                else:
                    del self._lines[key]
                self.batches += 1
                self.items += len(batch)
        missing = [RuntimeError("the batch's apply gave no outcome for this item")] * (len(batch) - len(errors))
        for entry, error in zip(batch, [*errors, *missing], strict=False):
            entry.error = error
            entry.batch = None
            entry.done.set()
        if following:  # the first thread of the line applies it, and hands on what forms meanwhile
            following[0].batch = following
            following[0].done.set()
