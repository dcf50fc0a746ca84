"""Redelivered steps run in a forked child process: a crash kills the child, not the executor."""

from __future__ import annotations

import os
import signal

import pytest

from miniflow.actors.isolation import run_isolated
from miniflow.actors.registry import StepContext
from miniflow.protocol.errors import StepCrashed, StepFailed, StepTimedOut

CTX = StepContext(run_id="r", workflow="w", step="s", attempt=1, params={"n": 2})


def test_an_isolated_step_returns_its_output():
    assert run_isolated(lambda ctx: {"double": ctx.params["n"] * 2}, CTX, 30) == {"double": 4}


def test_an_isolated_step_that_kills_its_process_raises_step_crashed_and_this_process_lives():
    with pytest.raises(StepCrashed, match="signal 9"):
        run_isolated(lambda ctx: os.kill(os.getpid(), signal.SIGKILL), CTX, 30)


def test_an_isolated_step_that_raises_reports_the_original_type_and_message():
    def bad(ctx):
        raise KeyError("no such column")

    with pytest.raises(StepFailed, match="KeyError: 'no such column'") as info:
        run_isolated(bad, CTX, 30)
    assert info.value.error_type == "KeyError"


def test_an_isolated_step_past_its_timeout_is_killed_and_recorded_as_a_timeout():
    def forever(ctx):
        while True:
            pass

    with pytest.raises(StepTimedOut, match="timeout of 0.5s") as info:
        run_isolated(forever, CTX, 0.5)
    assert info.value.error_type == "Timeout"  # recorded as a timeout in the worker thread is
