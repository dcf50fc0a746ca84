"""Redelivered steps run in a forked child process: a crash kills the child, not the executor."""

from __future__ import annotations

import os
import signal

import pytest

from actors.app import StepCrashed, StepFailedInChild, run_isolated
from actors.registry import StepContext

CTX = StepContext(run_id="r", workflow="w", step="s", attempt=1, params={"n": 2})


def test_an_isolated_step_returns_its_output():
    assert run_isolated(lambda ctx: {"double": ctx.params["n"] * 2}, CTX, 30) == {"double": 4}


def test_an_isolated_step_that_kills_its_process_raises_step_crashed_and_this_process_lives():
    with pytest.raises(StepCrashed, match="signal 9"):
        run_isolated(lambda ctx: os.kill(os.getpid(), signal.SIGKILL), CTX, 30)


def test_an_isolated_step_that_raises_reports_the_original_type_and_message():
    def bad(ctx):
        raise KeyError("no such column")

    with pytest.raises(StepFailedInChild, match="KeyError: 'no such column'"):
        run_isolated(bad, CTX, 30)


def test_an_isolated_step_past_its_timeout_is_killed():
    def forever(ctx):
        while True:
            pass

    with pytest.raises(TimeoutError, match="timeout of 0.5s"):
        run_isolated(forever, CTX, 0.5)
