"""A workflow as MiniFlow holds it: a validated DAG of steps, its params, its retry policies.

``definitions`` builds these from YAML or plain data (and says what is wrong); ``to_spec`` is the
JSON stored per deployed version.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TriggerRule(StrEnum):
    """When a step runs, given how its needs ended (``coordinator.state.trigger_verdict``)."""

    ALL_SUCCEEDED = "all_succeeded"  # every need succeeded (the default)
    ALL_DONE = "all_done"  # every need ended, however it ended
    ANY_FAILED = "any_failed"  # every need ended, and at least one failed (or was not run for a failure)
    NONE_FAILED = "none_failed"  # every need ended, succeeded or skipped: none failed

@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter between attempts, in seconds."""

    initial: float = 1.0
    max: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.1  # +- this fraction of the delay, at random


@dataclass(frozen=True)
class CachePolicy:
    """A step's result cache (``coordinator.cache``): its output is reused for ``ttl`` seconds by any
    step of the same task whose cache key has the same value. ``key`` is an expression over
    ``inputs``, ``config`` and ``params``; None: the inputs, the config and the params that are
    not secret."""

    ttl: float
    key: str | None = None

    def to_spec(self) -> dict[str, Any]:
        return {"ttl": self.ttl, **({"key": self.key} if self.key is not None else {})}


class MapFailure(StrEnum):
    """What a map does when one of its elements fails for good (``coordinator.mapping``)."""

    FAIL = "fail"  # the map step fails (its elements still out are cancelled): the default
    CONTINUE = "continue"  # the others go on; the failed element's place in the list of results is null


@dataclass(frozen=True)
class MapSpec:
    """A step run once per element of a list: the output of step ``over`` (or the field ``path`` of
    it), each element an instance ``name[i]`` with its own attempts, at most ``concurrency`` out at
    once. The step's output is the list of its instances' outputs, in order."""

    over: str
    path: tuple[str, ...] = ()
    concurrency: int = 1000
    on_failure: MapFailure = MapFailure.FAIL

    def to_spec(self) -> dict[str, Any]:
        return {"over": ".".join((self.over, *self.path)), "concurrency": self.concurrency,
                "on_failure": str(self.on_failure)}


def instance_name(step: str, index: int) -> str:
    """The name of element ``index`` of map step ``step``: ``step[index]``."""
    return f"{step}[{index}]"


def instance_of(name: str) -> tuple[str, int] | None:
    """The map step and index of an instance name (``fan[3]`` -> ``("fan", 3)``), else None."""
    if not name.endswith("]") or "[" not in name:
        return None
    step, _, index = name[:-1].partition("[")
    canonical = index.isascii() and index.isdigit() and str(int(index)) == index  # no "007", no "²"
    return (step, int(index)) if canonical else None


@dataclass(frozen=True)
class StepSpec:
    name: str
    task: str
    needs: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    retries: int = 0
    backoff: Backoff = Backoff()
    timeout: float | None = None
    when: str | None = None  # a condition over params and inputs: false skips the step and what needs it
    trigger: TriggerRule = TriggerRule.ALL_SUCCEEDED  # how the step's needs must have ended for it to run
    cache: CachePolicy | None = None  # reuse a stored output of the same task and key instead of running
    map: MapSpec | None = None  # run once per element of a list output of a step it needs

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any = None
    required: bool = False
    secret: bool = False
    description: str = ""


@dataclass(frozen=True)
class Concurrency:
    """How many runs of a workflow may run at once (``coordinator.concurrency`` enforces it): at most
    ``max_active_runs`` in all, and at most ``max_per_key`` with the same value of ``key`` (an
    expression over ``params``, e.g. one run per customer). A run past a limit waits, ``queued``."""

    max_active_runs: int | None = None
    key: str | None = None
    max_per_key: int | None = None

    def to_spec(self) -> dict[str, Any]:
        return {name: value for name, value in (("max_active_runs", self.max_active_runs), ("key", self.key),
                                                 ("max_per_key", self.max_per_key)) if value is not None}


@dataclass(frozen=True)
class Workflow:
    """A validated workflow. ``to_spec()`` is the JSON stored per version; ``from_spec`` reads it."""

    name: str
    steps: dict[str, StepSpec]
    params: dict[str, ParamSpec] = field(default_factory=dict)
    description: str = ""
    version: int | None = None
    timeout: float | None = None
    concurrency: Concurrency | None = None

    def spec(self, step: str) -> StepSpec:
        """The spec of a step or of an instance of a map step (``fan[3]``: the spec of ``fan``)."""
        found = self.steps.get(step)
        if found is not None:
            return found
        mapped = instance_of(step)
        if mapped is None or mapped[0] not in self.steps:
            raise KeyError(step)
        return self.steps[mapped[0]]

    def dependents(self, step: str) -> list[str]:
        """The steps that need ``step``, in definition order (computed once per workflow)."""
        return self._dependents.get(step, [])

    @functools.cached_property
    def _dependents(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for spec in self.steps.values():
            for need in spec.needs:
                found.setdefault(need, []).append(spec.name)
        return found

    @functools.cached_property
    def needs_of_joins(self) -> dict[str, tuple[str, ...]]:
        """Per step: every step needed by its dependents that have more than one need, sorted. Steps
        with the same joins share one tuple: 1,000 steps before one join hold one list of 1,000
        names, not a million (8 MB kept for as long as the workflow is cached)."""
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        found = {}
        for step, deps in self._dependents.items():
            joins = tuple(d for d in deps if len(self.steps[d].needs) > 1)
            if joins not in shared:
                shared[joins] = tuple(sorted({n for d in joins for n in self.steps[d].needs}))
            found[step] = shared[joins]
        return found

    def descendants(self, steps: list[str]) -> list[str]:
        """``steps`` and every step that needs one of them, directly or not, in definition order."""
        found, todo = set(steps), list(steps)
        while todo:
            for dependent in self.dependents(todo.pop()):
                if dependent not in found:
                    found.add(dependent)
                    todo.append(dependent)
        return [name for name in self.steps if name in found]

    @functools.cached_property
    def conditional_roots(self) -> bool:
        """Whether a step that needs nothing has a condition (a start then decides it first)."""
        return any(self.steps[name].when is not None for name in self.roots())

    @functools.cached_property
    def tolerates_failure(self) -> bool:
        """Whether a step runs whatever its needs did (a trigger rule other than all_succeeded): then a
        failed step does not end its run at once; the run goes on until every step has ended, and fails."""
        return any(spec.trigger != TriggerRule.ALL_SUCCEEDED for spec in self.steps.values())

    @functools.cached_property
    def cached(self) -> bool:
        """Whether a step of it has a result cache (its dispatches then look in the cache first)."""
        return any(spec.cache is not None for spec in self.steps.values())

    @functools.cached_property
    def mapped(self) -> bool:
        """Whether a step of it is a map (its dispatches then spread those over their elements)."""
        return any(spec.map is not None for spec in self.steps.values())

    @functools.cached_property
    def pooled(self) -> bool:
        """Whether a step of it goes to a pool (its dispatches then check the pool's slots)."""
        return any(spec.queue is not None for spec in self.steps.values())

    @functools.cached_property
    def ends(self) -> list[str]:
        """The steps nothing needs: the run has succeeded when they have."""
        return [name for name in self.steps if name not in self._dependents]

    @functools.cached_property
    def order(self) -> dict[str, int]:
        """Each step's place in the definition (dispatch follows it)."""
        return {name: i for i, name in enumerate(self.steps)}

    def roots(self) -> list[str]:
        return [s.name for s in self.steps.values() if not s.needs]

    def secret_params(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params.values() if p.secret)

    @functools.cached_property
    def secret_param_list(self) -> list[str]:
        """The secret params' names, sorted (as step messages carry them); computed once."""
        return sorted(self.secret_params())

    def to_spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "timeout": self.timeout,
            # only when set, so that a workflow without limits keeps its checksum
            **({"concurrency": self.concurrency.to_spec()} if self.concurrency is not None else {}),
            "params": {p.name: {"default": p.default, "required": p.required, "secret": p.secret,
                                "description": p.description} for p in self.params.values()},
            "steps": [{
                "name": s.name, "task": s.task, "needs": list(s.needs), "config": s.config,
                "queue": s.queue, "retries": s.retries, "timeout": s.timeout,
                "backoff": {"initial": s.backoff.initial, "max": s.backoff.max,
                            "multiplier": s.backoff.multiplier, "jitter": s.backoff.jitter},
                # only when set, so that a workflow without conditions keeps its checksum
                **({"when": s.when} if s.when is not None else {}),
                **({"trigger": str(s.trigger)} if s.trigger != TriggerRule.ALL_SUCCEEDED else {}),
                **({"cache": s.cache.to_spec()} if s.cache is not None else {}),
                **({"map": s.map.to_spec()} if s.map is not None else {}),
            } for s in self.steps.values()],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], version: int | None = None) -> Workflow:
        """A stored spec, validated by the same parser as a file (so a stored version stays valid)."""
        from .definitions import parse  # the parser builds these types: imported where it is needed

        workflow = parse(spec, source=f"stored workflow {spec.get('name')!r}")
        return dataclasses.replace(workflow, version=version)


def find_cycle(steps: dict[str, StepSpec]) -> list[str] | None:
    """A dependency cycle as a path that starts and ends on the same step, or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(steps, white)
    for start in steps:
        if colour[start] != white:
            continue
        path: list[str] = [start]
        iters = [iter(steps[start].needs)]
        colour[start] = grey
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = black
                iters.pop()
            elif colour[nxt] == grey:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                iters.append(iter(steps[nxt].needs))
    return None
