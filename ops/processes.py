"""Launching and supervising `miniflow worker` and `miniflow timer` processes from another program
(the integration tests, the benchmarks): a subprocess that is ready once it prints its ready line,
and is stopped with SIGTERM (SIGKILL if it does not stop in time)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent  # where this environment's `miniflow` command is


class MiniflowProcess:
    """One `miniflow <command>` process; its stdout and stderr go to ``log``."""

    COMMAND = "worker"

    def __init__(self, env: dict[str, str], args: list[str], log: Path, prefix: list[str] | None = None,
                 cwd: Path | str | None = None, preexec: Callable[[], None] | None = None) -> None:
        self.log_path = log
        self._log = log.open("w")
        # prefix: run it through another command, e.g. `ip netns exec <ns>` for a node of its own;
        # preexec: run in the child before the command (e.g. to die with its parent)
        self.proc = subprocess.Popen([*(prefix or []), str(BIN / "miniflow"), self.COMMAND, *args], cwd=cwd, env=env,
                                     stdout=self._log, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
        self.ready = threading.Event()
        self.lines: list[str] = []
        self.pumped = threading.Event()  # set once the process's stderr has ended (every line is in)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        marker = f"miniflow {self.COMMAND} ready"
        try:
            for line in self.proc.stderr:
                self.lines.append(line)
                if not self._log.closed:
                    self._log.write(line)
                    self._log.flush()
                if marker in line:
                    self.ready.set()
        finally:
            self.pumped.set()

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until the process printed its ready line; AssertionError (with its last lines) if not."""
        if not self.ready.wait(timeout):
            self.stop()
            raise AssertionError(f"{self.COMMAND} not ready in {timeout}s:\n{''.join(self.lines[-30:])}")

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the process, in MB."""
        return self._status_mb("VmHWM:")

    def rss_mb(self) -> float:
        """Resident memory (VmRSS) of the process now, in MB."""
        return self._status_mb("VmRSS:")

    def _status_mb(self, field: str) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def kill(self) -> None:
        """SIGKILL, for a process whose work may be lost (the test engine's own executors)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # never leave one stopped
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.pumped.wait(5)  # its last lines (say, what tracing lost at exit) reach self.lines and the log
        if not self._log.closed:
            self._log.close()


class WorkerProcess(MiniflowProcess):
    COMMAND = "worker"


class ApiProcess(MiniflowProcess):
    """`miniflow api`; ``url`` once ready (give ``--port 0`` for a free port)."""

    COMMAND = "api"

    @property
    def url(self) -> str:
        line = next(x for x in self.lines if "miniflow api ready on " in x)
        return line.split("miniflow api ready on ", 1)[1].split()[0]


class TimerProcess(MiniflowProcess):
    COMMAND = "timer"

    def __init__(self, env: dict[str, str], log: Path, cwd: Path | str | None = None) -> None:
        super().__init__(env, [], log, cwd=cwd)
