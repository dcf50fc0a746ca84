"""The step registry: executor nodes run the tasks their step modules register.

    from miniflow.actors import step

    @step("csv.load")
    def load(ctx):
        return {"rows": read(ctx.params["input"])}

A step function takes one :class:`StepContext` and returns plain data (JSON-compatible: it is
stored in Postgres and passed to the steps that need it). Raising fails the attempt; the
workflow's retry policy decides what follows. Steps are delivered at least once: use
``ctx.idempotency_key`` to make their side effects idempotent.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from miniflow.protocol.errors import ConfigError, StepNotFound

StepFn = Callable[["StepContext"], Any]


@dataclass(frozen=True)
class StepContext:
    run_id: str
    workflow: str
    step: str
    attempt: int
    params: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    node: str = ""
    item: Any = None  # an instance of a map step: its element of the list the step maps over
    index: int | None = None  # and the element's place in that list (None: not a map instance)
    artifacts: Any = None  # persistence.offload.StepArtifacts: store files for the steps after this one

    @property
    def idempotency_key(self) -> str:
        """The same for every delivery of this attempt: ``run:step:attempt``."""
        return f"{self.run_id}:{self.step}:{self.attempt}"


class Registry:
    """Task name -> function. One global registry is filled by ``@step`` at import time."""

    def __init__(self) -> None:
        self._steps: dict[str, StepFn] = {}
        self._lock = threading.Lock()

    def register(self, name: str, fn: StepFn) -> StepFn:
        with self._lock:
            known = self._steps.get(name)
            if known is not None and known is not fn and _qualname(known) != _qualname(fn):
                raise ConfigError(f"task {name!r} is registered twice: by {_qualname(known)} and {_qualname(fn)}")
            self._steps[name] = fn
        return fn

    def get(self, name: str) -> StepFn:
        try:
            return self._steps[name]
        except KeyError:
            raise StepNotFound(f"task {name!r} is not registered on this node (known: "
                               f"{', '.join(sorted(self._steps)) or 'none'}); start the worker with "
                               "--steps naming the module that defines it") from None

    def names(self) -> list[str]:
        return sorted(self._steps)

    def __contains__(self, name: object) -> bool:
        return name in self._steps


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


registry = Registry()


def step(name: str) -> Callable[[StepFn], StepFn]:
    """Register the decorated function as the task ``name`` in the global registry."""
    if not isinstance(name, str) or not name:
        raise ConfigError("@step needs a task name, e.g. @step('csv.load')")

    def decorate(fn: StepFn) -> StepFn:
        return registry.register(name, fn)

    return decorate


def load_step_modules(paths: list[str] | tuple[str, ...]) -> list[str]:
    """Import step modules by dotted path; a clear error when one cannot be imported."""
    loaded = []
    for path in paths:
        try:
            importlib.import_module(path)
        except ImportError as exc:
            raise ConfigError(f"cannot import step module {path!r}: {exc}") from exc
        loaded.append(path)
    return loaded
