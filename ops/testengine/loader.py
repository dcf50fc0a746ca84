"""Reading scenario files into :class:`Scenario` objects; every error names its file and line."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .model import (
    EXPECT_KEYS,
    FAULTS,
    RESTART_FAULTS,
    SCENARIO_KEYS,
    STEP_EXPECT_KEYS,
    STUB_KEYS,
    Case,
    Expect,
    Fault,
    Lined,
    Scenario,
    ScenarioError,
    StepExpect,
    Stub,
    check_expression,
    duration_s,
    load_yaml_with_lines,
    parse_order,
)

PATTERNS = ("*.scenario.yaml", "*.scenario.yml", "scenario_*.yaml", "scenarios.yaml")
MAX_FILE_BYTES = 1 << 20


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Scenario files under the given files and folders (a folder: the files named by PATTERNS)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for pattern in PATTERNS:
                found.extend(sorted(path.rglob(pattern)))
        elif path.is_file():
            found.append(path)
        else:
            raise ScenarioError(str(path), None, "no such file or folder")
    return list(dict.fromkeys(found))


def load_file(path: Path) -> list[Scenario]:
    source = str(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ScenarioError(source, None, f"a scenario file is at most {MAX_FILE_BYTES} bytes")
    data = load_yaml_with_lines(path.read_text(encoding="utf-8"), source)
    if not isinstance(data, Lined):
        raise ScenarioError(source, 1, "a scenario file is a mapping with 'scenario:' or 'scenarios:'")
    if "scenarios" in data:
        items = data["scenarios"]
        if not isinstance(items, list) or not all(isinstance(i, Lined) for i in items):
            raise ScenarioError(source, data.lines["scenarios"], "'scenarios' must be a list of scenarios")
        shared = {k: v for k, v in data.items() if k != "scenarios"}
        extra = sorted(set(shared) - {"workflow", "steps", "tags", "params"})
        if extra:
            raise ScenarioError(source, data.lines[extra[0]], f"unknown suite key {extra[0]!r} "
                                "(a suite may set workflow, steps, tags, params for its scenarios)")
        return [parse(_merged(shared, item), path) for item in items]
    return [parse(data, path)]


def _merged(shared: dict[str, Any], item: Lined) -> Lined:
    merged = Lined({**shared, **item})
    merged.lines, merged.line = dict(item.lines), item.line
    if "tags" in shared and "tags" in item:
        merged["tags"] = list(shared["tags"]) + list(item["tags"])
    return merged


def parse(data: Lined, path: Path | None) -> Scenario:
    """One scenario from its YAML mapping; ScenarioError names the line of the key at fault."""
    source = str(path) if path else "<python>"
    key: str | None = None
    try:
        extra = sorted(str(k) for k in set(data) - SCENARIO_KEYS)
        if extra:
            key = extra[0]
            raise ValueError(f"unknown key {extra[0]!r} (allowed: {', '.join(sorted(SCENARIO_KEYS))})")
        key = "scenario"
        name = data.get("scenario")
        if not isinstance(name, str) or not name.strip():
            raise ValueError("every scenario needs 'scenario: <name>'")
        key = "workflow"
        target = _workflow_target(data.get("workflow"), path)
        key = None
        scenario = Scenario(name=name.strip(), workflow=target, source=source, line=data.line,
                            steps_modules=_strings(data.get("steps", []), "steps"),
                            params=_mapping(data.get("params", {}), "params"),
                            tags=_strings(data.get("tags", []), "tags"))
        for key, part in (("stubs", _stubs), ("faults", _faults), ("expect", _expect)):
            if key in data:
                setattr(scenario, key, part(data[key]))
        key = "cases"
        if "cases" in data:
            scenario.cases = _cases(data["cases"], scenario.params, scenario.expect)
        key = None
        _timing(scenario, data)
        if scenario.schedule is None and scenario.expect.ledger is not None:
            key = "expect"
            raise ValueError("'ledger' expectations need a 'schedule'")
    except ValueError as exc:
        prefix = f"{key}: " if key in ("stubs", "faults", "expect", "cases") else ""
        raise ScenarioError(source, data.lines.get(key, data.line) if key else data.line, f"{prefix}{exc}") from None
    return scenario


def _workflow_target(workflow: Any, path: Path | None) -> Path | str:
    if not isinstance(workflow, str) or not workflow:
        raise ValueError("'workflow' must name a workflow file (relative to this file) or a deployed workflow")
    if not workflow.endswith((".yaml", ".yml")):
        return workflow
    target = (path.parent / workflow) if path else Path(workflow)
    if not target.is_file():
        raise ValueError(f"workflow file {str(target)!r} does not exist")
    return target


def _timing(scenario: Scenario, data: Lined) -> None:
    """start_at, timeout, until, cancel and schedule."""
    if "start_at" in data:
        scenario.start_at = _instant(data["start_at"])
    if "timeout" in data:
        scenario.timeout_s = duration_s(data["timeout"], "timeout")
    if "until" in data:
        scenario.until_s = duration_s(data["until"], "until")
    if "cancel" in data:
        cancel = data["cancel"]
        if not isinstance(cancel, dict) or set(cancel) != {"after_step_started"}:
            raise ValueError("'cancel' is {after_step_started: <step>}")
        scenario.cancel_after_step = str(cancel["after_step_started"])
    if "schedule" in data:
        schedule = data["schedule"]
        if not isinstance(schedule, dict) or "cron" not in schedule:
            raise ValueError("'schedule' is a schedule as in a workflow file (cron, timezone, catch_up, ...)")
        if scenario.until_s is None:
            raise ValueError("a schedule scenario needs 'until' (how long it runs, in virtual time)")
        scenario.schedule = dict(schedule)


def _strings(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{what}' must be a list of names")
    return list(value)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"'{what}' must be a mapping")
    return dict(value)


def _instant(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise ValueError("'start_at' must be an ISO 8601 time with its offset (e.g. 2026-03-28T12:00:00Z)")
    if value.tzinfo is None:
        raise ValueError("'start_at' needs an offset or Z (a virtual start is an instant)")
    return value.astimezone(UTC)


def _stubs(value: Any) -> dict[str, Stub]:
    stubs = {}
    for step, raw in _mapping(value, "stubs").items():
        if not isinstance(raw, dict):
            raise ValueError(f"the stub of step {step!r} must be a mapping ({', '.join(sorted(STUB_KEYS))})")
        extra = sorted(set(raw) - STUB_KEYS)
        if extra:
            raise ValueError(f"unknown key {extra[0]!r} in the stub of step {step!r} "
                             f"(allowed: {', '.join(sorted(STUB_KEYS))})")
        stub = Stub(output=raw.get("output"), expr=raw.get("expr"),
                    error_type=str(raw.get("error_type", "StubFailure")),
                    error=str(raw.get("error", "failed by the scenario's stub")),
                    duration_s=duration_s(raw.get("duration", 0), f"the duration of step {step!r}"),
                    timeout=bool(raw.get("timeout", False)), crash=bool(raw.get("crash", False)))
        fails = raw.get("fail_attempts", 0)
        if isinstance(fails, bool) or not isinstance(fails, int) or not 0 <= fails <= 100:
            raise ValueError(f"fail_attempts of step {step!r} must be a whole number from 0 to 100")
        stub.fail_attempts = fails
        if stub.expr is not None:
            if not isinstance(stub.expr, str):
                raise ValueError(f"expr of step {step!r} must be a string")
            check_expression(stub.expr)
        stubs[str(step)] = stub
    return stubs


def _faults(value: Any) -> list[Fault]:
    if not isinstance(value, list):
        raise ValueError("'faults' must be a list of {name: ..., ...}")
    return [_fault(raw) for raw in value]


def _fault(raw: Any) -> Fault:
    if not isinstance(raw, dict) or raw.get("name") not in FAULTS:
        names = "; ".join(f"{k}: {v}" for k, v in FAULTS.items())
        raise ValueError(f"each fault needs a known name ({names})")
    extra = sorted(set(raw) - {"name", "step", "attempt", "at", "for", "by"})
    if extra:
        raise ValueError(f"unknown key {extra[0]!r} in fault {raw['name']}")
    fault = Fault(raw["name"], raw.get("step"), raw.get("attempt"), line=getattr(raw, "line", 0))
    if fault.name in ("duplicate_step", "duplicate_result", "executor_killed") and not fault.step:
        raise ValueError(f"fault {fault.name} needs 'step'")
    for key in ("at", "for", "by"):
        if key in raw:
            setattr(fault, f"{key}_s", duration_s(raw[key], f"'{key}' of fault {fault.name}"))
    if fault.name == "timer_down" and (fault.at_s is None or fault.for_s is None):
        raise ValueError("fault timer_down needs 'at' and 'for'")
    if fault.name == "clock_moved" and (fault.at_s is None or fault.by_s is None):
        raise ValueError("fault clock_moved needs 'at' and 'by' (forward only)")
    if fault.name in RESTART_FAULTS and not fault.step and fault.at_s is None:
        raise ValueError(f"fault {fault.name} needs 'step' (it restarts while that step runs) or 'at'")
    return fault


def _expect(value: Any) -> Expect:
    raw = _mapping(value, "expect")
    extra = sorted(set(raw) - EXPECT_KEYS)
    if extra:
        raise ValueError(f"unknown key {extra[0]!r} (allowed: {', '.join(sorted(EXPECT_KEYS))})")
    expect = Expect(status=raw.get("status"), error=raw.get("error"), dead_letters=raw.get("dead_letters"),
                    runs=raw.get("runs"), ledger=raw.get("ledger"))
    for key in ("max_duration", "min_duration"):
        if key in raw:
            setattr(expect, f"{key}_s", duration_s(raw[key], key))
    expect.order = [parse_order(item) for item in raw.get("order", [])]
    for step, spec in _mapping(raw.get("steps", {}), "steps").items():
        spec = _mapping(spec, f"steps.{step}")
        extra = sorted(set(spec) - STEP_EXPECT_KEYS)
        if extra:
            raise ValueError(f"unknown key {extra[0]!r} for step {step!r} "
                             f"(allowed: {', '.join(sorted(STEP_EXPECT_KEYS))})")
        one = StepExpect(status=spec.get("status"), attempts=spec.get("attempts"), error=spec.get("error"),
                         match=_mapping(spec.get("match", {}), f"steps.{step}.match"))
        if "output" in spec:
            one.output = spec["output"]
        for key in ("max_duration", "min_duration"):
            if key in spec:
                setattr(one, f"{key}_s", duration_s(spec[key], f"{key} of step {step!r}"))
        expect.steps[str(step)] = one
    return expect


def _cases(value: Any, params: dict[str, Any], expect: Expect) -> list[Case]:
    if not isinstance(value, list) or not value:
        raise ValueError("'cases' must be a non-empty list of {name, params, expect}")
    cases, seen = [], set()
    for i, raw in enumerate(value, 1):
        raw = _mapping(raw, f"cases[{i}]")
        name = str(raw.get("name", i))
        if name in seen:
            raise ValueError(f"two cases are named {name!r}")
        seen.add(name)
        case_expect = _expect({**_plain(expect), **raw.get("expect", {})}) if "expect" in raw else expect
        cases.append(Case(name, {**params, **_mapping(raw.get("params", {}), f"cases[{i}].params")}, case_expect))
    return cases


def _plain(expect: Expect) -> dict[str, Any]:
    """The scenario-level expectations a case's own ``expect`` is laid over (top-level keys only)."""
    out: dict[str, Any] = {}
    if expect.status is not None:
        out["status"] = expect.status
    if expect.error is not None:
        out["error"] = expect.error
    if expect.dead_letters is not None:
        out["dead_letters"] = expect.dead_letters
    return out
