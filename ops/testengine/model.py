"""Scenarios as written: a YAML file (one scenario or a suite of them) or the Python API, validated
into :class:`Scenario` objects. Errors name the file and the line (:class:`ScenarioError`).

    scenario: retries then success
    workflow: ../diamond.yaml          # a workflow file, relative to this file
    steps: [examples.steps]            # step modules for the steps that are not stubbed
    params: {n: 3}
    tags: [smoke]
    stubs:
      fetch: {fail_attempts: 2, error_type: ConnectionError, output: {rows: 3}}
      total: {expr: "{'sum': inputs.fetch.rows * 2}", duration: 10s}
    faults:
      - {name: duplicate_result, step: fetch}
    expect:
      status: succeeded
      steps:
        fetch: {status: succeeded, attempts: 3}
        total: {output: {sum: 6}, match: {"$.sum": 6}}
      order: ["fetch < total"]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from miniflow.coordinator.expressions import ExpressionError, compile_expression
from miniflow.protocol.errors import MiniFlowError

MISSING: Any = object()
STUB_KEYS = {"output", "expr", "fail_attempts", "error_type", "error", "duration", "timeout", "crash"}
FAULTS = {"duplicate_step": "a step message delivered twice", "duplicate_result": "a result delivered twice",
          "executor_killed": "the executor dies after the step's body, before its result is sent",
          "timer_down": "the timer is down from `at` for `for` (cron scenarios)",
          "clock_moved": "the clock jumps forward by `by` at `at`",
          "broker_restart": "RabbitMQ restarts (down for `for`) while `step` runs, or `at` after the start "
                            "(--against --private-services)",
          "database_restart": "Postgres restarts (down for `for`) while `step` runs, or `at` after the start "
                              "(--against --private-services)"}
RESTART_FAULTS = ("broker_restart", "database_restart")
STEP_EXPECT_KEYS = {"status", "attempts", "output", "match", "error", "max_duration", "min_duration"}
EXPECT_KEYS = {"status", "error", "steps", "order", "max_duration", "min_duration", "dead_letters", "ledger", "runs"}
SCENARIO_KEYS = {"scenario", "workflow", "steps", "params", "tags", "stubs", "faults", "expect", "cases",
                 "start_at", "schedule", "until", "cancel", "timeout", "description"}
DEFAULT_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class ScenarioError(MiniFlowError):
    """A scenario file that cannot be used: names the file, the line and what is wrong."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source, self.line, self.message = source, line, message
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")


@dataclass
class Stub:
    """What a stubbed step does instead of its task. ``fn`` (Python API only) computes the output
    from the StepContext; ``expr`` does it with a safe expression over params, inputs, config and
    attempt; else ``output``. Attempts 1..fail_attempts fail with ``error_type``."""

    output: Any = None
    expr: str | None = None
    fn: Callable[..., Any] | None = None
    fail_attempts: int = 0
    error_type: str = "StubFailure"
    error: str = "failed by the scenario's stub"
    duration_s: float = 0.0
    timeout: bool = False
    crash: bool = False


@dataclass
class Fault:
    name: str
    step: str | None = None
    attempt: int | None = None
    at_s: float | None = None  # seconds after the scenario's start (virtual; real for a restart)
    for_s: float | None = None
    by_s: float | None = None
    line: int = 0


@dataclass
class StepExpect:
    status: str | None = None
    attempts: int | None = None
    output: Any = MISSING
    match: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    max_duration_s: float | None = None
    min_duration_s: float | None = None


@dataclass
class Expect:
    status: str | None = None
    error: str | None = None  # a substring of the run's error
    steps: dict[str, StepExpect] = field(default_factory=dict)
    order: list[tuple[str, str]] = field(default_factory=list)  # (a, b): a finished before b started
    max_duration_s: float | None = None
    min_duration_s: float | None = None
    dead_letters: int | None = None
    ledger: list[dict[str, Any]] | None = None  # [{due: local ISO time, outcome: started}, ...]
    runs: int | None = None


@dataclass
class Case:
    name: str | None
    params: dict[str, Any]
    expect: Expect


@dataclass
class Scenario:
    name: str
    workflow: Path | str  # a workflow file, or a deployed workflow's name (--against)
    steps_modules: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    stubs: dict[str, Stub] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    expect: Expect = field(default_factory=Expect)
    cases: list[Case] = field(default_factory=list)
    start_at: datetime = DEFAULT_START
    schedule: dict[str, Any] | None = None  # a schedule of the workflow, as in a workflow file
    until_s: float | None = None  # how long (virtual) a schedule scenario runs
    cancel_after_step: str | None = None  # cancel the run once this step has started
    timeout_s: float = 60.0  # wall-clock bound of one case
    source: str = "<python>"
    line: int = 0

    def expanded(self) -> list[tuple[str, Case]]:
        """(case id, case) per case: one for a scenario without ``cases``."""
        base = f"{self.source}::{self.name}"
        if not self.cases:
            return [(base, Case(None, dict(self.params), self.expect))]
        return [(f"{base}[{c.name}]", c) for c in self.cases]

    @property
    def restarts(self) -> list[Fault]:
        return [f for f in self.faults if f.name in RESTART_FAULTS]

    @property
    def virtual_only(self) -> str | None:
        """Why this scenario needs the virtual clock (embedded mode), or None."""
        if self.schedule is not None:
            return "a schedule scenario needs the virtual clock (embedded mode)"
        if any(f.name in ("clock_moved", "timer_down") for f in self.faults):
            return "a clock fault needs the virtual clock (embedded mode)"
        return None


def duration_s(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration like 250ms, 10s, 5m, 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{what} {value!r} is not a duration (like 250ms, 10s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 <= seconds <= 366 * 86400:
        raise ValueError(f"{what} must be from 0 to 366 days")
    return seconds


def check_expression(source: str) -> None:
    try:
        compile_expression(source)
    except ExpressionError as exc:
        raise ValueError(f"expr: {exc}") from None


def parse_order(item: Any) -> tuple[str, str]:
    if not isinstance(item, str) or item.count("<") != 1:
        raise ValueError(f"an order constraint is 'a < b' (a finished before b started), not {item!r}")
    a, b = (part.strip() for part in item.split("<"))
    if not a or not b:
        raise ValueError(f"an order constraint names two steps: {item!r}")
    return a, b


def load_yaml_with_lines(text: str, source: str) -> Any:
    """YAML where every mapping is a :class:`Lined` dict that knows the line of each key."""
    try:
        return yaml.load(text, Loader=_LinedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ScenarioError(source, mark.line + 1 if mark else None, f"not valid YAML: {exc}") from None


class Lined(dict[str, Any]):
    lines: dict[str, int]
    line: int


class _LinedLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LinedLoader, node: yaml.MappingNode) -> Lined:
    loader.flatten_mapping(node)
    mapping = Lined()
    mapping.lines, mapping.line = {}, node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be plain text", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)  # type: ignore[index]
        mapping.lines[str(key)] = key_node.start_mark.line + 1
    return mapping


_LinedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
