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


@step("bench.blob")
def blob(ctx: StepContext) -> str:
    """A text output of config.kib KiB (default 250: just under the artifact threshold, so it travels
    inline, in the result and in the next step's message)."""
    return "x" * (int(ctx.config.get("kib", 250)) * 1024)
