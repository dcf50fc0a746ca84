"""Group commit per run: results of one run that arrive together are recorded in one transaction.

Every result of a run locks the run's row until its transaction commits, so the results of one
wide run (a fan-out of 1,000 steps) queue up on that lock, one commit after another, while the
other worker threads wait in Postgres. Here a thread that finds another thread already working on
the same run does not wait for the lock: it hands its result to that run's line and sleeps. When
the working thread has committed, it wakes every thread of the batch it took and gives the line
that formed meanwhile, as the next batch, to the first thread in it. Each message is still acked
by its own thread, after the commit that recorded it (a crash before the commit redelivers it), and
each thread works on at most one batch (its own result's, or the one handed to it).

A batch with a rejected item (one forged result, a value the database refuses) is applied again
one item at a time, so each message meets its own error and no other message is lost with it; a
failure of the database or the broker is every item's, and every message of the batch is retried
(handlers.py decides which is which). A thread that dramatiq's time limit interrupts as it is
handed a batch still applies that batch before the exception leaves it, so no line is left stuck.
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
    gone: bool = False  # its thread was interrupted while waiting: hand it no batch


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
        self.batches = 0  # batches applied and the items in them (the tests read them)
        self.items = 0

    def submit(self, key: Hashable, item: T) -> None:
        """Apply ``item`` (now, or in a batch with others of ``key``); raises its error, if it had one.

        A thread interrupted while it waits (dramatiq's time limit raises in the thread) is marked
        gone, so no batch is handed to it; its item is still applied with the others. One that is
        interrupted once a batch was handed to it still applies that batch, in ``finally``."""
        entry: Entry[T] = Entry(item)
        try:
            with self._lock:
                line = self._lines.get(key)
                if line is None:
                    entry.batch = [entry]
                    self._lines[key] = []
                else:
                    line.append(entry)
            if entry.batch is None:
                entry.done.wait()
        finally:
            with self._lock:
                batch, entry.batch = entry.batch, None
                if batch is None and not entry.done.is_set():
                    entry.gone = True
            if batch is not None:  # this thread applies a batch: its own, or one handed to it
                self._work(key, batch)
        if entry.error is not None:
            raise entry.error

    def _work(self, key: Hashable, batch: list[Entry[T]]) -> None:
        """Apply ``batch``, wake its threads, and hand the line that formed meanwhile to its first
        thread still waiting (or apply it here, when every thread of it is gone)."""
        while batch:
            errors: Sequence[BaseException | None] = ()
            try:
                try:
                    errors = self.apply(batch)
                except BaseException as exc:  # noqa: BLE001 - the batch's own threads raise it (and retry)
                    errors = [exc] * len(batch)
            finally:
                batch = self._handed_on(key, batch, errors)

    def _handed_on(self, key: Hashable, batch: list[Entry[T]],
                   errors: Sequence[BaseException | None]) -> list[Entry[T]]:
        """Wake the threads of an applied ``batch``; returns the next batch if no thread can take it."""
        with self._lock:
            line = self._lines.get(key, [])
            following, rest = line[:self.most], line[self.most:]
            if following:
                self._lines[key] = rest
            else:
                self._lines.pop(key, None)
            self.batches += 1
            self.items += len(batch)
            taker = next((e for e in following if not e.gone), None)
            if taker is not None:
                taker.batch = following
        missing = [RuntimeError("the batch's apply gave no outcome for this item")] * (len(batch) - len(errors))
        for entry, error in zip(batch, [*errors, *missing], strict=False):
            entry.error = error
            entry.done.set()
        if taker is not None:
            taker.done.set()
            return []
        return following
