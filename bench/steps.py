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


@step("bench.range")
def numbers(ctx: StepContext) -> list[int]:
    """[0, 1, ... config.n - 1]: the list a map step runs over."""
    return list(range(int(ctx.config.get("n", 0))))
