"""Running a step in a forked child process, so that a step that kills its process kills only the
child (a poison step), and a step past its timeout can be killed.

The executor uses it for redelivered steps: a redelivery means the executor that held the message
died, perhaps because of this very step.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable
from typing import Any

from miniflow.protocol.errors import StepCrashed, StepFailed, StepTimedOut

from .registry import StepContext

MAX_ERROR_LEN = 2000


def run_isolated(fn: Callable[[StepContext], Any], ctx: StepContext, timeout_s: float | None) -> Any:
    """Run a step function in a forked child process; return its output or raise its failure.

    A child killed by a signal raises StepCrashed; past ``timeout_s`` the child is killed and
    StepTimedOut is raised; an exception in the step raises StepFailed with the exception's type
    name as its ``error_type``. The child only runs the function and writes to a pipe."""
    mp = multiprocessing.get_context("fork")
    reader, writer = mp.Pipe(duplex=False)

    def child() -> None:
        try:
            writer.send(("ok", fn(ctx)))
        except BaseException as exc:  # noqa: BLE001 - in the child: report everything, then leave at once
            writer.send(("error", type(exc).__name__, str(exc)[:MAX_ERROR_LEN], traceback.format_exc()))
        finally:
            os._exit(0)

    process = mp.Process(target=child, daemon=True)
    process.start()
    writer.close()
    try:
        if not reader.poll(timeout_s):
            raise StepTimedOut(f"step exceeded its timeout of {timeout_s:g}s (run in an isolated process)")
        try:
            reply = reader.recv()
        except EOFError:
            process.join(5)
            code = process.exitcode
            signal_note = f", signal {-code}" if code is not None and code < 0 else ""
            raise StepCrashed(f"step killed the process running it (exit {code}{signal_note}); it had already "
                              "been delivered to an executor that died: treated as a poison step") from None
        if reply[0] == "ok":
            return reply[1]
        error_type, message, trace = reply[1], reply[2], reply[3]
        raise StepFailed(f"{error_type}: {message}", error_type, trace)
    finally:
        reader.close()
        if process.is_alive():
            process.kill()
        process.join(5)
