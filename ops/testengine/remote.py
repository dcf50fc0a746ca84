"""The scenario task for real executors (`miniflow test --against`): load it with
``--steps miniflow.ops.testengine.remote`` and the executor can run a scenario's stubs and faults.

The engine deploys a copy of the scenario's workflow in which each stubbed step, and each step with
an executor fault, runs the task ``miniflow.scenario``; what that task does is in the step's config
under ``__scenario__`` (the stub as plain data, the real task to call, the attempts after which the
executor dies). Nothing else about the executor changes: the message path, signing, retries,
timeouts and the isolation of redelivered steps are those of production.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any

from dramatiq.middleware import CurrentMessage

from miniflow.actors.registry import StepContext, registry, step
from miniflow.protocol.errors import ConfigError, StepFailed

from .against import CONFIG_KEY, TASK
from .model import Stub
from .stubs import play

TICK_S = 0.05  # stub sleeps are cut in ticks, so that a step timeout (an async exception) lands
PARENT = os.getpid()  # the executor; a redelivered step runs in a forked child of it


def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(TICK_S, left))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@step(TASK)
def scenario_task(ctx: StepContext) -> Any:
    spec = ctx.config.get(CONFIG_KEY)
    if not isinstance(spec, dict):
        raise StepFailed(f"task {TASK} needs the step config key {CONFIG_KEY} (it is deployed by `miniflow test`)",
                         "ScenarioConfigError")
    message = CurrentMessage.get_current_message()
    redelivered = bool(getattr(message, "redelivered", False)) or os.getpid() != PARENT
    stub = Stub(**spec["stub"]) if spec.get("stub") else None
    if stub is not None and stub.crash:
        _die()  # the poison step: it kills whatever runs it (the executor, then its isolated child)
    if stub is not None:  # past a timeout: the executor's time limit interrupts the sleep
        output = play(stub, ctx, _sleep, 2 * (spec.get("timeout_s") or 0) + 5)
    else:
        output = _real(spec.get("real"), ctx)
    if ctx.attempt in spec.get("killed", ()) and not redelivered:
        _die()  # the executor dies after the body, before its result is sent
    return output


def _real(task: Any, ctx: StepContext) -> Any:
    if not isinstance(task, str) or task not in registry:
        raise ConfigError(f"the scenario's real task {task!r} is not registered on this executor "
                          "(start it with the scenario's --steps modules)")
    config = {k: v for k, v in ctx.config.items() if k != CONFIG_KEY}
    return registry.get(task)(dataclasses.replace(ctx, config=config))
