"""An executor's word on the steps it holds, to the coordinator: "running" for a step still running
a moment after it started, and "declined" for a step this node cannot run (it lacks the task).

Nothing here is on the path of a fast step: a step is noted in a dict when it starts and dropped
when it ends; a background thread tells the coordinator only about the ones that have been running
for ``after_s`` (0.2 s by default), so a no-op step sends no message at all. The events are sent
fire-and-forget: losing one changes what a run shows for a moment, never what it does.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import dramatiq

from miniflow.protocol.envelope import envelope
from miniflow.protocol.messages import StepProgress, StepTask
from miniflow.protocol.names import STEP_PROGRESS, QueueNames

from .broker import publish
from .guard import as_message
from .outages import report

logger = logging.getLogger("miniflow.actors")
RUNNING_AFTER_S = 0.2


@dataclass
class _Held:
    task: StepTask
    since: float
    told: bool = False


class ProgressReporter:
    def __init__(self, broker: dramatiq.Broker, names: QueueNames, node: str, *,
                 after_s: float = RUNNING_AFTER_S) -> None:
        self.broker = broker
        self.names = names
        self.node = node
        self.after_s = after_s
        self._held: dict[int, _Held] = {}  # by worker thread (each entry touched by its own thread)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def started(self, task: StepTask) -> None:
        self._held[threading.get_ident()] = _Held(task, time.monotonic())

    def finished(self) -> None:
        self._held.pop(threading.get_ident(), None)

    def running(self) -> list[dict[str, Any]]:
        """The attempts this node runs now (for its heartbeat): run id, step, attempt, since (epoch s)."""
        offset = time.time() - time.monotonic()
        return [{"run_id": h.task.run_id, "step": h.task.step, "attempt": h.task.attempt,
                 "since": round(h.since + offset, 3)} for h in list(self._held.values())]

    def declined(self, task: StepTask, detail: str) -> None:
        self._send(StepProgress(task.run_id, task.step, task.attempt, "declined", self.node, detail, task.cap))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="miniflow-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        period = max(0.02, min(0.1, self.after_s / 2))
        while not self._stop.wait(period):
            now = time.monotonic()
            for held in list(self._held.values()):
                if not held.told and now - held.since >= self.after_s:
                    held.told = True
                    task = held.task
                    self._send(StepProgress(task.run_id, task.step, task.attempt, "running", self.node, cap=task.cap))

    def _send(self, event: StepProgress) -> None:
        try:
            publish(self.broker, as_message(envelope(self.names.coordinator, STEP_PROGRESS, event.to_payload())))
        except Exception as exc:  # noqa: BLE001 - progress is cosmetic: never fail a step for it
            if not report(exc):
                logger.info("progress of run %s step %s not sent: %s", event.run_id, event.step, type(exc).__name__)
