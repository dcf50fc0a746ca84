"""Workflow definitions: YAML (or a dict from Python) -> a validated, normalised spec.

A definition is a DAG of steps. Each step names a task (registered on executor nodes with
``@step("name")``), the steps it ``needs``, static ``config``, a step ``queue`` (pool of nodes), a
retry policy and a timeout. Errors name the source, the step and the problem, e.g.::

    examples/bad.yaml: step 'join': needs unknown step 'lod' (known: load, clean)
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from miniflow.protocol.errors import DefinitionError

MAX_STEPS = 1000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
TASK_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
POOL_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_RETRIES = 100

_WORKFLOW_KEYS = {"name", "description", "version", "params", "steps", "timeout", "schedules"}
_STEP_KEYS = {"name", "task", "needs", "config", "queue", "retries", "backoff", "timeout", "description"}
_BACKOFF_KEYS = {"initial", "max", "multiplier", "jitter"}
_PARAM_KEYS = {"default", "required", "description", "secret"}


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter between attempts, in seconds."""

    initial: float = 1.0
    max: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.1  # +- this fraction of the delay, at random


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
class Workflow:
    """A validated workflow. ``to_spec()`` is the JSON stored per version; ``from_spec`` reads it."""

    name: str
    steps: dict[str, StepSpec]
    params: dict[str, ParamSpec] = field(default_factory=dict)
    description: str = ""
    version: int | None = None
    timeout: float | None = None

    def dependents(self, step: str) -> list[str]:
        return [s.name for s in self.steps.values() if step in s.needs]

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
            "params": {p.name: {"default": p.default, "required": p.required, "secret": p.secret,
                                "description": p.description} for p in self.params.values()},
            "steps": [{
                "name": s.name, "task": s.task, "needs": list(s.needs), "config": s.config,
                "queue": s.queue, "retries": s.retries, "timeout": s.timeout,
                "backoff": {"initial": s.backoff.initial, "max": s.backoff.max,
                            "multiplier": s.backoff.multiplier, "jitter": s.backoff.jitter},
            } for s in self.steps.values()],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], version: int | None = None) -> Workflow:
        workflow = parse(spec, source=f"stored workflow {spec.get('name')!r}")
        return Workflow(workflow.name, workflow.steps, workflow.params, workflow.description, version,
                        workflow.timeout)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain names, not lists or mappings", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_source(path: str | Path) -> str:
    """The text of a workflow file; DefinitionError naming the file when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError(str(path), f"cannot read file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise DefinitionError(str(path), "file is not UTF-8 text") from exc


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Plain data from YAML text (safe types only; a repeated key is an error, not a silent overwrite)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError(source, f"not valid YAML{where}: {problem}") from None


def load_file(path: str | Path) -> Workflow:
    """Read and validate a YAML workflow file."""
    return loads(read_source(path), str(path))


def loads(text: str, source: str = "<string>") -> Workflow:
    return parse(load_yaml(text, source), source)


def _number(value: Any, what: str, source: str, step: str | None, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DefinitionError(source, f"{what} must be a number", step)
    if value < minimum:
        raise DefinitionError(source, f"{what} must be >= {minimum:g}", step)
    return float(value)


def _unknown(keys: set[str], allowed: set[str], what: str, source: str, step: str | None) -> None:
    extra = sorted(str(k) for k in keys - allowed)
    if extra:
        raise DefinitionError(source, f"unknown {what} key(s) {', '.join(extra)} "
                              f"(allowed: {', '.join(sorted(allowed))})", step)


def parse(data: Any, source: str = "<dict>") -> Workflow:
    """Validate a definition given as plain data (from YAML or Python)."""
    if not isinstance(data, dict):
        raise DefinitionError(source, "a workflow must be a mapping with 'name' and 'steps'")
    _unknown(set(data), _WORKFLOW_KEYS, "workflow", source, None)
    # Schedules live beside the workflow (coordinator.schedule_spec reads them; `miniflow schedules add
    # --from FILE`): they are not part of the versioned spec, so changing one makes no new version.
    raw_schedules = data.get("schedules")
    if raw_schedules is not None and not isinstance(raw_schedules, list):
        raise DefinitionError(source, "'schedules' must be a list of schedules")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DefinitionError(source, "'name' must be 1-128 characters of letters, digits, '_', '.', '-'")
    timeout = data.get("timeout")
    if timeout is not None:
        timeout = _number(timeout, "'timeout'", source, None, minimum=0.001)
    params = _parse_params(data.get("params"), source)
    steps = _parse_steps(data.get("steps"), source)
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise DefinitionError(source, "'description' must be text")
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise DefinitionError(source, "'version' must be a whole number >= 1 (or left out: deploy numbers it)")
    return Workflow(name=name, steps=steps, params=params, description=description, version=version,
                    timeout=timeout)


def _parse_steps(raw_steps: Any, source: str) -> dict[str, StepSpec]:
    """The steps, each valid, with names unique and their needs a DAG."""
    if not isinstance(raw_steps, list) or not raw_steps:
        raise DefinitionError(source, "'steps' must be a non-empty list of steps")
    if len(raw_steps) > MAX_STEPS:
        raise DefinitionError(source, f"{len(raw_steps)} steps is more than the limit of {MAX_STEPS}")
    steps: dict[str, StepSpec] = {}
    for index, raw in enumerate(raw_steps):
        spec = _parse_step(raw, index, source)
        if spec.name in steps:
            raise DefinitionError(source, "duplicate step name (each step needs its own name)", spec.name)
        steps[spec.name] = spec
    for spec in steps.values():
        for need in spec.needs:
            if need == spec.name:
                raise DefinitionError(source, "needs itself", spec.name)
            if need not in steps:
                known = ", ".join(list(steps)[:20])
                raise DefinitionError(source, f"needs unknown step {need!r} (known: {known})", spec.name)
    cycle = find_cycle(steps)
    if cycle:
        raise DefinitionError(source, "dependency cycle: " + " -> ".join(cycle), cycle[0])
    return steps


def _parse_params(raw: Any, source: str) -> dict[str, ParamSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DefinitionError(source, "'params' must be a mapping of parameter names")
    params: dict[str, ParamSpec] = {}
    for pname, pdef in raw.items():
        if not isinstance(pname, str) or not NAME_RE.fullmatch(pname):
            raise DefinitionError(source, f"param name {pname!r} is not a valid name")
        if pdef is None or not isinstance(pdef, dict):
            pdef = {"default": pdef}
        _unknown(set(pdef), _PARAM_KEYS, f"param {pname!r}", source, None)
        required = pdef.get("required", False)
        secret = pdef.get("secret", False)
        if not isinstance(required, bool) or not isinstance(secret, bool):
            raise DefinitionError(source, f"param {pname!r}: 'required' and 'secret' must be true or false")
        params[pname] = ParamSpec(pname, pdef.get("default"), required, secret,
                                  str(pdef.get("description") or ""))
    return params


def _parse_step(raw: Any, index: int, source: str) -> StepSpec:
    if not isinstance(raw, dict):
        raise DefinitionError(source, f"steps[{index}] must be a mapping with 'name' and 'task'")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DefinitionError(source, f"steps[{index}]: 'name' must be 1-128 characters of letters, "
                              "digits, '_', '.', '-'")
    _unknown(set(raw), _STEP_KEYS, "step", source, name)
    task = raw.get("task")
    if not isinstance(task, str) or not TASK_RE.fullmatch(task):
        raise DefinitionError(source, "'task' must name a registered step, like 'csv.load' "
                              "(letters, digits, '_', '.', '-')", name)
    needs = _parse_needs(raw.get("needs"), source, name)
    config = raw.get("config")
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise DefinitionError(source, "'config' must be a mapping", name)
    queue = raw.get("queue")
    if queue is not None and (not isinstance(queue, str) or not POOL_RE.fullmatch(queue)):
        raise DefinitionError(source, "'queue' must be 1-64 characters of letters, digits, '_', '-'", name)
    retries = raw.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise DefinitionError(source, f"'retries' must be a whole number from 0 to {MAX_RETRIES}", name)
    timeout = raw.get("timeout")
    if timeout is not None:
        timeout = _number(timeout, "'timeout'", source, name, minimum=0.001)
    backoff = _parse_backoff(raw.get("backoff"), source, name)
    return StepSpec(name=name, task=task, needs=needs, config=config, queue=queue,
                    retries=retries, backoff=backoff, timeout=timeout)


def _parse_needs(raw: Any, source: str, step: str) -> tuple[str, ...]:
    needs = raw or []
    if isinstance(needs, str):
        needs = [needs]
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise DefinitionError(source, "'needs' must be a step name or a list of step names", step)
    if len(set(needs)) != len(needs):
        raise DefinitionError(source, "'needs' lists a step twice", step)
    return tuple(needs)


def _parse_backoff(raw: Any, source: str, step: str) -> Backoff:
    if raw is None:
        return Backoff()
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = {"initial": raw, "max": max(60.0, float(raw))}
    if not isinstance(raw, dict):
        raise DefinitionError(source, "'backoff' must be seconds or a mapping "
                              "(initial, max, multiplier, jitter)", step)
    _unknown(set(raw), _BACKOFF_KEYS, "backoff", source, step)
    b = Backoff(
        initial=_number(raw.get("initial", 1.0), "backoff 'initial'", source, step),
        max=_number(raw.get("max", 60.0), "backoff 'max'", source, step),
        multiplier=_number(raw.get("multiplier", 2.0), "backoff 'multiplier'", source, step, minimum=1.0),
        jitter=_number(raw.get("jitter", 0.1), "backoff 'jitter'", source, step),
    )
    if b.jitter > 1:
        raise DefinitionError(source, "backoff 'jitter' must be a fraction from 0 to 1", step)
    if b.max < b.initial:
        raise DefinitionError(source, "backoff 'max' must be >= 'initial'", step)
    return b


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
