"""Workflow definitions: YAML (or a dict from Python) -> a validated :class:`~.workflow.Workflow`.

A definition is a DAG of steps. Each step names a task (registered on executor nodes with
``@step("name")``), the steps it ``needs``, static ``config``, a step ``queue`` (pool of nodes), a
retry policy and a timeout. Every problem is reported, not only the first; each names the source,
the step and the problem, e.g.::

    examples/bad.yaml: step 'join': needs unknown step 'lod' (known: load, clean)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from miniflow.protocol.errors import DefinitionError

from .concurrency import parse_concurrency
from .step_options import parse_cache, parse_map, parse_trigger, parse_when
from .workflow import Backoff, ParamSpec, StepSpec, TriggerRule, Workflow, find_cycle

MAX_STEPS = 1000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
TASK_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
POOL_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_RETRIES = 100
MAX_STEP_TIMEOUT_S = 24 * 3600.0  # a step's time limit travels in its message, capped there at a day
MAX_BACKOFF_S = 24 * 3600.0  # delayed messages are held by workers: a day at the most

_WORKFLOW_KEYS = {"name", "description", "version", "params", "steps", "timeout", "schedules", "concurrency"}
_STEP_KEYS = {"name", "task", "needs", "config", "queue", "retries", "backoff", "timeout", "description", "when",
              "trigger", "cache", "map"}
_BACKOFF_KEYS = {"initial", "max", "multiplier", "jitter"}
_PARAM_KEYS = {"default", "required", "description", "secret"}
T = TypeVar("T")


class _Problems:
    """Collects the problems of one definition, so that all of them are reported at once."""

    def __init__(self) -> None:
        self.found: list[DefinitionError] = []

    def take(self, check: Callable[[], T], default: T) -> T:
        """The value ``check`` returns, or (its problem recorded) ``default``."""
        try:
            return check()
        except DefinitionError as exc:
            self.found.extend(exc.problems)
            return default

    def raise_any(self) -> None:
        if self.found:
            raise DefinitionError.several(self.found)


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
    """Validate a definition given as plain data (from YAML or Python); DefinitionError listing
    every problem found (``.problems``)."""
    if not isinstance(data, dict):
        raise DefinitionError(source, "a workflow must be a mapping with 'name' and 'steps'")
    problems = _Problems()
    problems.take(lambda: _unknown(set(data), _WORKFLOW_KEYS, "workflow", source, None), None)
    name = problems.take(lambda: _parse_name(data.get("name"), source), "")
    timeout = problems.take(lambda: _parse_timeout(data.get("timeout"), source, None), None)
    params: dict[str, ParamSpec] = problems.take(lambda: _parse_params(data.get("params"), source), {})
    steps = _parse_steps(data.get("steps"), source, problems, params)
    concurrency = problems.take(lambda: parse_concurrency(data.get("concurrency"), source, params), None)
    description = data.get("description") or ""
    if not isinstance(description, str):
        problems.found.append(DefinitionError(source, "'description' must be text"))
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        problems.found.append(DefinitionError(source, "'version' must be a whole number >= 1 (or left out: "
                                              "deploy numbers it)"))
    # Schedules live beside the workflow (coordinator.schedule_spec reads them; `miniflow schedules add
    # --from FILE`): they are not part of the versioned spec, so changing one makes no new version.
    if data.get("schedules") is not None and not isinstance(data.get("schedules"), list):
        problems.found.append(DefinitionError(source, "'schedules' must be a list of schedules"))
    problems.raise_any()
    return Workflow(name=name, steps=steps, params=params, description=description, version=version,
                    timeout=timeout, concurrency=concurrency)


def _parse_name(name: Any, source: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DefinitionError(source, "'name' must be 1-128 characters of letters, digits, '_', '.', '-'")
    return name


def _parse_timeout(timeout: Any, source: str, step: str | None) -> float | None:
    if timeout is None:
        return None
    seconds = _number(timeout, "'timeout'", source, step, minimum=0.001)
    if step is not None and seconds > MAX_STEP_TIMEOUT_S:
        raise DefinitionError(source, f"a step's 'timeout' must be at most {MAX_STEP_TIMEOUT_S:g} seconds", step)
    return seconds


def _parse_steps(raw_steps: Any, source: str, problems: _Problems, params: dict[str, ParamSpec]
                 ) -> dict[str, StepSpec]:
    """The steps that are valid (the problems of the others recorded), names unique, needs a DAG."""
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.found.append(DefinitionError(source, "'steps' must be a non-empty list of steps"))
        return {}
    if len(raw_steps) > MAX_STEPS:
        problems.found.append(DefinitionError(source, f"{len(raw_steps)} steps is more than the limit of "
                                              f"{MAX_STEPS}"))
        return {}
    steps: dict[str, StepSpec] = {}
    named: list[str] = []  # every valid step name, also of steps with other problems
    for index, raw in enumerate(raw_steps):
        spec = _parse_step(raw, index, source, problems, params)
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and NAME_RE.fullmatch(name):
            if name in named:
                problems.found.append(DefinitionError(source, "duplicate step name (each step needs its own "
                                                      "name)", name))
            named.append(name)
        if spec is not None and spec.name not in steps:
            steps[spec.name] = spec
    _check_needs(steps, named, source, problems)
    if not problems.found:
        cycle = find_cycle(steps)
        if cycle:
            problems.found.append(DefinitionError(source, "dependency cycle: " + " -> ".join(cycle), cycle[0]))
    return steps


def _check_needs(steps: dict[str, StepSpec], named: list[str], source: str, problems: _Problems) -> None:
    for spec in steps.values():
        for need in spec.needs:
            if need == spec.name:
                problems.found.append(DefinitionError(source, "needs itself", spec.name))
            elif need not in named:
                known = ", ".join(named[:20])
                problems.found.append(DefinitionError(source, f"needs unknown step {need!r} (known: {known})",
                                                      spec.name))


def _parse_params(raw: Any, source: str) -> dict[str, ParamSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DefinitionError(source, "'params' must be a mapping of parameter names")
    problems = _Problems()
    params: dict[str, ParamSpec] = {}
    for pname, pdef in raw.items():
        spec = problems.take(functools.partial(_parse_param, pname, pdef, source), None)
        if spec is not None:
            params[spec.name] = spec
    problems.raise_any()
    return params


def _parse_param(pname: Any, pdef: Any, source: str) -> ParamSpec:
    if not isinstance(pname, str) or not NAME_RE.fullmatch(pname):
        raise DefinitionError(source, f"param name {pname!r} is not a valid name")
    if pdef is None or not isinstance(pdef, dict):
        pdef = {"default": pdef}
    _unknown(set(pdef), _PARAM_KEYS, f"param {pname!r}", source, None)
    required = pdef.get("required", False)
    secret = pdef.get("secret", False)
    if not isinstance(required, bool) or not isinstance(secret, bool):
        raise DefinitionError(source, f"param {pname!r}: 'required' and 'secret' must be true or false")
    return ParamSpec(pname, pdef.get("default"), required, secret, str(pdef.get("description") or ""))


def _parse_step(raw: Any, index: int, source: str, problems: _Problems, params: dict[str, ParamSpec]
                ) -> StepSpec | None:
    """One step, or None (its problems recorded, every field checked)."""
    if not isinstance(raw, dict):
        problems.found.append(DefinitionError(source, f"steps[{index}] must be a mapping with 'name' and 'task'"))
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        problems.found.append(DefinitionError(source, f"steps[{index}]: 'name' must be 1-128 characters of "
                                              "letters, digits, '_', '.', '-'"))
        return None
    before = len(problems.found)
    problems.take(lambda: _unknown(set(raw), _STEP_KEYS, "step", source, name), None)
    task = problems.take(lambda: _parse_task(raw.get("task"), source, name), "")
    needs: tuple[str, ...] = problems.take(lambda: _parse_needs(raw.get("needs"), source, name), ())
    config: dict[str, Any] = problems.take(lambda: _parse_config(raw.get("config"), source, name), {})
    queue = problems.take(lambda: _parse_queue(raw.get("queue"), source, name), None)
    retries = problems.take(lambda: _parse_retries(raw.get("retries", 0), source, name), 0)
    timeout = problems.take(lambda: _parse_timeout(raw.get("timeout"), source, name), None)
    backoff = problems.take(lambda: _parse_backoff(raw.get("backoff"), source, name), Backoff())
    when = problems.take(lambda: parse_when(raw.get("when"), source, name), None)
    trigger = problems.take(lambda: parse_trigger(raw.get("trigger"), source, name, needs), TriggerRule.ALL_SUCCEEDED)
    cache = problems.take(lambda: parse_cache(raw.get("cache"), source, name, params), None)
    fan = problems.take(lambda: parse_map(raw.get("map"), source, name, needs, raw.get("cache") is not None), None)
    if len(problems.found) > before:
        return None
    return StepSpec(name=name, task=task, needs=needs, config=config, queue=queue, retries=retries,
                    backoff=backoff, timeout=timeout, when=when, trigger=trigger, cache=cache, map=fan)


def _parse_task(task: Any, source: str, step: str) -> str:
    if not isinstance(task, str) or not TASK_RE.fullmatch(task):
        raise DefinitionError(source, "'task' must name a registered step, like 'csv.load' "
                              "(letters, digits, '_', '.', '-')", step)
    return task


def _parse_config(config: Any, source: str, step: str) -> dict[str, Any]:
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise DefinitionError(source, "'config' must be a mapping", step)
    return config


def _parse_queue(queue: Any, source: str, step: str) -> str | None:
    if queue is not None and (not isinstance(queue, str) or not POOL_RE.fullmatch(queue)):
        raise DefinitionError(source, "'queue' must be 1-64 characters of letters, digits, '_', '-'", step)
    return queue


def _parse_retries(retries: Any, source: str, step: str) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise DefinitionError(source, f"'retries' must be a whole number from 0 to {MAX_RETRIES}", step)
    return retries


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
    if b.max > MAX_BACKOFF_S:
        raise DefinitionError(source, f"backoff 'max' must be at most {MAX_BACKOFF_S:g} seconds", step)
    return b

