"""The tasks a scenario's workflow runs: each step's task wrapped so that the scenario's stub (if
any) replaces it, and the executor-killed and crash faults can act where a real executor would die."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from dramatiq.middleware import CurrentMessage
from dramatiq.middleware.time_limit import TimeLimitExceeded

from miniflow.actors.registry import Registry, StepContext, StepFn
from miniflow.coordinator import Workflow
from miniflow.coordinator.expressions import ExpressionError, evaluate
from miniflow.protocol.errors import StepFailed

from .clock import VirtualClock
from .model import Scenario, Stub

Lose = Callable[[str, str, int, Any], None]


def stub_output(stub: Stub, ctx: StepContext) -> Any:
    if stub.fn is not None:
        return stub.fn(ctx)
    if stub.expr is not None:
        try:
            return evaluate(stub.expr, {"params": ctx.params, "inputs": ctx.inputs, "config": ctx.config,
                                        "attempt": ctx.attempt, "step": ctx.step, "run_id": ctx.run_id})
        except ExpressionError as exc:
            raise StepFailed(f"the stub's expr failed: {exc}", "StubExprError") from None
    return stub.output


def play(stub: Stub, ctx: StepContext, sleep: Callable[[float], None], timeout_s: float) -> Any:
    """What a stub does for an attempt (all but ``crash``): sleep past the step's timeout (``timeout_s``
    is how long to sleep for that), or sleep its duration, then fail or give its output."""
    if stub.timeout:
        sleep(timeout_s)
        raise TimeLimitExceeded()
    sleep(stub.duration_s)
    if ctx.attempt <= stub.fail_attempts:
        raise StepFailed(f"{stub.error_type}: {stub.error}", stub.error_type)
    return stub_output(stub, ctx)


def build_registry(scenario: Scenario, workflow: Workflow, base: Registry, clock: VirtualClock | None,
                   lose: Lose) -> tuple[Registry, Workflow]:
    """A registry with one task per step of the workflow (``scenario.<step>``), and the workflow
    rewritten to use them."""
    registry = Registry()
    steps = {}
    for name, spec in workflow.steps.items():
        task = f"scenario.{name}"
        stub = scenario.stubs.get(name)
        real = None if stub is not None else base.get(spec.task)
        registry.register(task, _wrap(name, stub, real, spec.timeout, scenario, clock, lose))
        steps[name] = dataclasses.replace(spec, task=task)
    return registry, dataclasses.replace(workflow, steps=steps)


def _wrap(step: str, stub: Stub | None, real: StepFn | None, timeout_s: float | None, scenario: Scenario,
          clock: VirtualClock | None, lose: Lose) -> StepFn:
    killed = {f.attempt or 1 for f in scenario.faults if f.name == "executor_killed" and f.step == step}
    parent = os.getpid()

    def sleep(seconds: float) -> None:
        if clock is not None:
            clock.sleep(seconds)
        else:
            time.sleep(seconds)

    def task(ctx: StepContext) -> Any:
        message = CurrentMessage.get_current_message()
        redelivered = bool(getattr(message, "redelivered", False)) or os.getpid() != parent
        if stub is not None and stub.crash:
            if os.getpid() != parent or (clock is None and redelivered):
                os.kill(os.getpid(), signal.SIGKILL)  # the poison step kills whatever runs it
            lose(ctx.run_id, step, ctx.attempt, message)  # embedded: this executor "died" holding it
            return None
        if stub is not None:
            output = play(stub, ctx, sleep, timeout_s or 0)
        else:
            assert real is not None
            output = real(ctx)
        if ctx.attempt in killed and not redelivered and os.getpid() == parent:
            lose(ctx.run_id, step, ctx.attempt, message)
        return output

    return task
