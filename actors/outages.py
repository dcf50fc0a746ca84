"""Outages of the broker and the database, told once: one line when a dependency goes away, at most
one reminder a minute while it stays away, one line when it is back. Never a traceback.

Every process has one :data:`OUTAGES` tracker. MiniFlow's own loops report to it (``failed`` on an
error of a dependency, ``recovered`` on a success); :class:`OutageFilter`, installed on the log
handler, turns the connection noise of pika and dramatiq (an ERROR with a traceback per attempt,
per consumer, every few seconds) into the same reports and drops the records. While a dependency
is down, a probe thread tries a TCP connection to it every second; once it answers and nothing has
failed for ``QUIET_S``, the dependency is back.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from miniflow.protocol.errors import BrokerUnavailable, DatabaseUnavailable
from miniflow.protocol.masking import mask_url

BROKER = "broker"
DATABASE = "database"
REMIND_EVERY_S = 60.0
QUIET_S = 2.0  # back only after the probe answers and nothing has failed for this long
# After a dependency is back, connections made before the outage fail once each as they are
# replaced: failures this soon after "back" are such stragglers, not a new outage.
REARM_S = 15.0
PROBE_EVERY_S = 1.0
logger = logging.getLogger("miniflow.outage")


@dataclass
class _Down:
    since: float
    last_failure: float
    last_told: float
    cause: str


class Outages:
    """The outage state of this process's dependencies. Thread-safe; cheap when all is well."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, log: logging.Logger = logger) -> None:
        self.clock = clock
        self.log = log
        self._down: dict[str, _Down] = {}
        self._where: dict[str, str] = {}
        self._targets: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self._back_at: dict[str, float] = {}
        self.on_recovered: Callable[[str], None] | None = None  # metrics: an outage of a dependency ended

    def watch(self, dependency: str, url: str, default_port: int) -> None:
        """Name a dependency by its (masked) URL in the lines, and probe its host and port when down."""
        parts = urlsplit(url)
        self._where[dependency] = f"{dependency} {mask_url(url)}"
        if parts.hostname:
            self._targets[dependency] = (parts.hostname, parts.port or default_port)

    def failed(self, dependency: str, cause: str) -> None:
        now = self.clock()
        with self._lock:
            down = self._down.get(dependency)
            if down is None and now - self._back_at.get(dependency, -REARM_S) < REARM_S:
                return  # a straggler of the outage that just ended
            if down is None:
                self._down[dependency] = _Down(now, now, now, cause)
                self.log.warning("%s is unreachable (%s); retrying, with a reminder every %.0f s",
                                 self._where.get(dependency, dependency), cause, REMIND_EVERY_S)
                self._start_prober()
                return
            down.last_failure, down.cause = now, cause
        self.remind()

    def recovered(self, dependency: str) -> None:
        if dependency not in self._down:  # the common case: nothing to do, no lock taken
            return
        with self._lock:
            down = self._down.pop(dependency, None)
            if down is not None:
                self._back_at[dependency] = self.clock()
        if down is not None:
            self.log.warning("%s is back after %.0f s", self._where.get(dependency, dependency),
                             self.clock() - down.since)
            if self.on_recovered is not None:
                self.on_recovered(dependency)

    def is_down(self, dependency: str) -> bool:
        return dependency in self._down

    def watching(self, dependency: str) -> bool:
        """Whether this process keeps the dependency (a worker or timer); one-shot commands do not:
        their failures are errors, told once by the command itself."""
        return dependency in self._where

    def remind(self) -> None:
        now = self.clock()
        with self._lock:
            due = [(name, down) for name, down in self._down.items() if now - down.last_told >= REMIND_EVERY_S]
            for _, down in due:
                down.last_told = now
        for name, down in due:
            self.log.warning("%s still unreachable after %.0f s (%s)", self._where.get(name, name), now - down.since,
                             down.cause)

    # -- the probe thread -------------------------------------------------------------------------
    def _start_prober(self) -> None:
        if self._prober is None or not self._prober.is_alive():
            self._prober = threading.Thread(target=self._probe, name="miniflow-outage-probe", daemon=True)
            self._prober.start()

    def _probe(self) -> None:
        while self._down:
            time.sleep(PROBE_EVERY_S)
            for name in list(self._down):
                down = self._down.get(name)
                target = self._targets.get(name)
                if down is None or target is None:
                    continue
                if self.clock() - down.last_failure >= QUIET_S and _answers(target):
                    self.recovered(name)
            self.remind()


def _answers(target: tuple[str, int]) -> bool:
    try:
        socket.create_connection(target, timeout=1.0).close()
        return True
    except OSError:
        return False


def dependency_of(exc: BaseException | None) -> str | None:
    """The dependency an exception says is unreachable, if it is such an exception (or caused by one)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, BrokerUnavailable):
            return BROKER
        if isinstance(exc, DatabaseUnavailable):
            return DATABASE
        module = type(exc).__module__
        if module.startswith("pika") or (module.startswith("dramatiq") and "Connection" in type(exc).__name__):
            return BROKER
        if module.startswith(("psycopg2", "sqlalchemy")) and type(exc).__name__ in ("OperationalError",
                                                                                     "InterfaceError"):
            return DATABASE
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


_DRAMATIQ_BROKER_LINES = ("Consumer encountered a connection error", "Failed to post_process_message",
                          "Failed to requeue messages", "Failed to ack message", "Failed to nack message",
                          "Encountered exception while closing")


class OutageFilter(logging.Filter):
    """Turns third-party connection noise into outage reports (and drops it); lets the rest through.

    At DEBUG (``verbose``) the records pass as well, so nothing is hidden from someone who asked."""

    def __init__(self, outages: Outages, verbose: bool = False) -> None:
        super().__init__()
        self.outages = outages
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        dependency = self._dependency(record)
        if dependency is None:
            return True
        if self.outages.watching(dependency):
            exc = record.exc_info[1] if record.exc_info else None
            self.outages.failed(dependency, type(exc).__name__ if exc is not None else "connection failed")
        return self.verbose

    def _dependency(self, record: logging.LogRecord) -> str | None:
        if record.levelno < logging.WARNING or record.name.startswith("miniflow.outage"):
            return None
        if record.name.startswith("pika"):
            return BROKER
        found = dependency_of(record.exc_info[1]) if record.exc_info else None
        if found is not None:
            return found
        if record.name.startswith("dramatiq") and isinstance(record.msg, str) \
                and record.msg.startswith(_DRAMATIQ_BROKER_LINES):
            return BROKER
        return None


OUTAGES = Outages()


def report(exc: BaseException, outages: Outages = OUTAGES) -> bool:
    """Report an exception to the tracker if it is an outage of a dependency; True when it was."""
    dependency = dependency_of(exc)
    if dependency is None:
        return False
    outages.failed(dependency, type(exc.__cause__ or exc).__name__)
    return True
