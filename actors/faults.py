"""Deterministic crash points for fault-injection tests.

With MINIFLOW_TEST_FAULTPOINT=name[,name...] in its environment (read by the ops entry point, passed
here), a process SIGKILLs itself when it reaches one of the named points: a crash exactly there,
with no clean-up, as a power cut or the OOM killer would do it.

    executor.after_body        the step ran; its result is not yet sent
    results.after_commit       the attempt is committed; step_finished is not yet published
    coordinator.after_commit   the run/step change is committed; its messages are not yet published
    coordinator.after_publish  the messages are published; their outbox rows are not yet deleted
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable

POINTS = frozenset({"executor.after_body", "results.after_commit", "coordinator.after_commit",
                    "coordinator.after_publish"})
logger = logging.getLogger("miniflow.faults")


class FaultPoints:
    def __init__(self, names: Iterable[str] = ()) -> None:
        self.armed = frozenset(n.strip() for n in names if n.strip())
        unknown = self.armed - POINTS
        if unknown:
            raise ValueError(f"unknown fault point(s) {sorted(unknown)}; known: {sorted(POINTS)}")

    def hit(self, name: str) -> None:
        if name in self.armed:
            logger.critical("fault point %s reached: killing this process (pid %d)", name, os.getpid())
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


NONE = FaultPoints()
