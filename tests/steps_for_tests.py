"""Steps used by the unit tests (registered in the global registry on import)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from miniflow import StepContext, step

_calls: Counter[tuple[str, str]] = Counter()
_lock = threading.Lock()


@step("test.flaky")
def flaky(ctx: StepContext) -> dict[str, Any]:
    """Fails config.fail_times times for a run, then succeeds."""
    with _lock:
        _calls[(ctx.run_id, ctx.step)] += 1
        n = _calls[(ctx.run_id, ctx.step)]
    if n <= int(ctx.config.get("fail_times", 0)):
        raise RuntimeError(f"flaky failure {n}")
    return {"calls": n, "attempt": ctx.attempt}


def flaky_calls(run_id: str, step_name: str) -> int:
    """How often test.flaky ran for a step of a run (in this process)."""
    with _lock:
        return _calls[(run_id, step_name)]


@step("test.boom")
def boom(ctx: StepContext) -> None:
    raise ValueError("the input is broken")


@step("test.echo")
def echo(ctx: StepContext) -> dict[str, Any]:
    return {"params": ctx.params, "inputs": ctx.inputs, "key": ctx.idempotency_key}


@step("test.not_json")
def not_json(ctx: StepContext) -> object:
    return {"when": object()}


@step("test.sleep")
def sleep(ctx: StepContext) -> float:
    """Sleeps in short slices (a blocking C call cannot be interrupted by a time limit)."""
    seconds = float(ctx.config.get("seconds", 0.01))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return seconds


@step("test.leaky")
def leaky(ctx: StepContext) -> None:
    """Fails with an error message that quotes a secret param, as careless code does."""
    raise PermissionError(f"token {ctx.params['token']} was refused")


@step("test.crash")
def crash(ctx: StepContext) -> None:
    """Kills the executor process running it, every time: a poison step."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@step("test.blob")
def blob(ctx: StepContext) -> str:
    """Returns config.kib KiB of text."""
    return "x" * (int(ctx.config.get("kib", 1)) * 1024)


@step("test.hold")
def hold(ctx: StepContext) -> dict[str, Any]:
    """On a node started with MINIFLOW_TEST_HOLD_DIR: leave a marker, then wait for a `release` file
    there (up to 5 minutes). Elsewhere: return at once. Lets a test cut a node off mid-step."""
    import os
    from pathlib import Path

    where = os.environ.get("MINIFLOW_TEST_HOLD_DIR")
    if where:
        gate = Path(where)
        (gate / f"started.{ctx.run_id}.{ctx.step}.{ctx.attempt}").write_text(ctx.node)
        end = time.monotonic() + 300
        while not (gate / "release").exists() and time.monotonic() < end:
            time.sleep(0.05)
    return {"node": ctx.node}


@step("test.secret_length")
def secret_length(ctx: StepContext) -> dict[str, Any]:
    """Uses a secret param without returning it: proves the executor got it in the clear."""
    return {"length": len(str(ctx.params["token"]))}


@step("test.timeout_error")
def timeout_error(ctx: StepContext) -> None:
    raise TimeoutError("step exceeded its deadline in this timeout test")


GATES: dict[str, threading.Event] = {}


@step("test.gate")
def gate(ctx: StepContext) -> dict[str, Any]:
    """Waits (up to a minute) until the test sets ``GATES[config.gate]``: holds a run mid-step."""
    with _lock:
        opened = GATES.setdefault(str(ctx.config.get("gate")), threading.Event())
    opened.wait(60)
    return {"gate": ctx.config.get("gate")}


@step("test.range")
def number_list(ctx: StepContext) -> dict[str, Any]:
    """{"items": [0, 1, ... config.n - 1]} (or config.items as given): a list to map over."""
    return {"items": ctx.config["items"] if "items" in ctx.config else list(range(int(ctx.config.get("n", 0))))}


@step("test.element")
def element(ctx: StepContext) -> Any:
    """One element of a map: fails for the items in config.fail_items (every attempt, or the first
    config.fail_times of them), else returns its index and item (and inputs, with config.inputs; the
    item alone, with config.bare)."""
    if ctx.item in ctx.config.get("fail_items", []):
        with _lock:
            _calls[(ctx.run_id, ctx.step)] += 1
            n = _calls[(ctx.run_id, ctx.step)]
        if n <= int(ctx.config.get("fail_times", 1_000_000)):
            raise RuntimeError(f"element {ctx.item!r} failed ({n})")
    if ctx.config.get("bare"):
        return ctx.item
    out = {"index": ctx.index, "item": ctx.item}
    return {**out, "inputs": ctx.inputs} if ctx.config.get("inputs") else out


@step("test.digest")
def digest(ctx: StepContext) -> dict[str, Any]:
    """The length and sha256 of each input (as text: a string itself, anything else as JSON)."""
    import hashlib
    import json

    out = {}
    for name, value in ctx.inputs.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out[name] = {"len": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return out


@step("test.write_file")
def write_file(ctx: StepContext) -> dict[str, Any]:
    """Stores config.kib KiB of bytes with ctx.artifacts.put; returns the reference."""
    data = bytes(range(256)) * (int(ctx.config.get("kib", 1)) * 4)
    return {"file": ctx.artifacts.put(data, name="data.bin", media_type="application/octet-stream")}


@step("test.read_file")
def read_file(ctx: StepContext) -> dict[str, Any]:
    """Reads the file of the input `write` with ctx.artifacts; returns its size and sha256."""
    import hashlib

    with ctx.artifacts.open(ctx.inputs["write"]["file"]) as reader:
        data = reader.read()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
