"""MiniFlow processes for the integration tests and the benchmarks: `miniflow worker` or
`miniflow timer` as a subprocess, ready once it prints its ready line, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class MiniflowProcess:
    COMMAND = "worker"

    def __init__(self, env: dict[str, str], args: list[str], log: Path, prefix: list[str] | None = None) -> None:
        self.log_path = log
        self._log = log.open("w")
        # prefix: run it through another command, e.g. `ip netns exec <ns>` for a node of its own
        self.proc = subprocess.Popen([*(prefix or []), str(BIN / "miniflow"), self.COMMAND, *args], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        marker = f"miniflow {self.COMMAND} ready"
        for line in self.proc.stderr:
            self.lines.append(line)
            self._log.write(line)
            self._log.flush()
            if marker in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        if not self.ready.wait(timeout):
            self.stop()
            raise AssertionError(f"{self.COMMAND} not ready in {timeout}s:\n{''.join(self.lines[-30:])}")

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the process, in MB."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # never leave one stopped
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


class WorkerProcess(MiniflowProcess):
    COMMAND = "worker"


class TimerProcess(MiniflowProcess):
    COMMAND = "timer"

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(env, [], log)
