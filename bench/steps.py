"""Steps for the benchmarks."""

from __future__ import annotations

import time

from miniflow import StepContext, step


@step("bench.noop")
def noop(ctx: StepContext) -> int:
    return ctx.attempt


@step("bench.sleep")
def nap(ctx: StepContext) -> None:
    time.sleep(float(ctx.config.get("seconds", 0.01)))
