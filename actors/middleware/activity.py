"""Counts the messages a worker is handling now (for heartbeats and the busy-threads gauge) and each
handled message by actor and outcome (for metrics)."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from ..metrics import NULL, Metrics


class Activity(Middleware):
    def __init__(self, metrics: Metrics = NULL) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self.busy = 0

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        with self._lock:
            self.busy += 1
        self.metrics.message_began()

    def after_process_message(self, broker: dramatiq.Broker, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        self._ended(message, exception is None)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._ended(message, True)

    def _ended(self, message: Any, ok: bool) -> None:
        with self._lock:
            self.busy = max(0, self.busy - 1)
        self.metrics.message_ended(str(getattr(message, "actor_name", "?")), ok)
