"""What a case found (``collect``) and whether it is what the scenario expects (``evaluate_checks``).
Each expectation becomes one :class:`Check` with expected, actual and a readable diff."""

from __future__ import annotations

import difflib
import json
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from miniflow.coordinator import Workflow
from miniflow.coordinator.expressions import ExpressionError
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.protocol.clock import as_utc
from miniflow.protocol.masking import mask_values

from .model import MISSING, Expect, Scenario, ScenarioError, StepExpect
from .results import ERROR, FAILED, PASSED, AttemptOutcome, CaseResult, Check, StepOutcome

_PATH_PART = re.compile(r"\.([A-Za-z_][\w-]*)|\[(-?\d+)\]|\[(?:'([^']*)'|\"([^\"]*)\")\]")


def json_path(value: Any, path: str) -> Any:
    """The value at a JSONPath of the simple form ``$.a.b[0]['c d']`` (ExpressionError when absent)."""
    if not path.startswith("$"):
        raise ExpressionError(f"a path starts with $ (e.g. $.rows[0].id), not {path!r}")
    pos, current = 1, value
    while pos < len(path):
        match = _PATH_PART.match(path, pos)
        if match is None:
            raise ExpressionError(f"cannot read {path!r} at column {pos + 1} (use .key, [index] or ['key'])")
        key, index, quoted1, quoted2 = match.groups()
        name = key if key is not None else quoted1 if quoted1 is not None else quoted2
        if index is not None:
            if not isinstance(current, list) or not -len(current) <= int(index) < len(current):
                raise ExpressionError(f"{path}: no element [{index}]")
            current = current[int(index)]
        else:
            if not isinstance(current, dict) or name not in current:
                raise ExpressionError(f"{path}: no key {name!r}")
            current = current[name]
        pos = match.end()
    return current


def _masked(value: Any, params: dict[str, Any], secrets: frozenset[str]) -> Any:
    if not secrets or value is None:
        return value
    text = json.dumps(value, default=str)
    masked = mask_values(text, params, secrets)
    try:
        return json.loads(masked)
    except ValueError:
        return masked


def collect(result: CaseResult, db: Database, workflow: Workflow, scenario: Scenario, *, key: str | None = None,
            run_id: str | None = None, letters_after: int = 0) -> None:
    """Fill ``result`` with what the database holds of the case: its run (by idempotency key, or by
    id, or the first run of the database), its steps and attempts, dead letters (with an id above
    ``letters_after``) and, for a schedule, the tick ledger."""
    secrets = workflow.secret_params()
    with db.connect() as conn:
        runs = repo.list_runs(conn, limit=10_000) if run_id is None else []
        if run_id is None:
            run_id = repo.run_id_for_key(conn, key) if key else (runs[-1].id if runs else None)
        run = repo.get_run(conn, run_id) if run_id else None
        steps = repo.get_steps(conn, run_id) if run_id else {}
        attempts = repo.get_attempts(conn, run_id) if run_id else []
        letters = [d for d in repo.list_dead_letters(conn, limit=1000) if (d.id or 0) > letters_after]
        schedule = repo.schedules.get_schedule(conn, "scenario") if scenario.schedule else None
        ticks = repo.schedules.all_ticks(conn, schedule.id) if schedule else []
    result.runs = len(runs) if runs else int(run is not None)
    result.dead_letters = [{"code": d.code, "queue": d.queue, "detail": d.detail[:500]} for d in letters]
    if schedule is not None:
        zone = ZoneInfo(schedule.timezone)
        result.ledger = [{"due": as_utc(t.due_at).astimezone(zone).isoformat(), "outcome": t.outcome,  # type: ignore[union-attr]
                          "kind": t.kind} for t in ticks]
    if run is None:
        return
    params = run.params
    base = as_utc(run.created_at)
    assert base is not None
    result.run_id, result.run_status = run.id, str(run.status)
    result.run_error = mask_values(run.error, params, secrets) if run.error else None

    def rel(when: datetime | None) -> float | None:
        moment = as_utc(when)
        return (moment - base).total_seconds() if moment is not None else None

    for name, spec in workflow.steps.items():
        row = steps.get(name)
        outcome = StepOutcome(name=name, status=str(row.status) if row else "not created", needs=list(spec.needs),
                              stubbed=name in scenario.stubs,
                              output=_masked(row.output, params, secrets) if row else None)
        for a in (a for a in attempts if a.step == name):
            outcome.attempts.append(AttemptOutcome(
                attempt=a.attempt, status="succeeded" if a.ok else "failed", error_type=a.error_type,
                error=mask_values(a.error, params, secrets) if a.error else None, node=a.node,
                started_at=rel(a.started_at), finished_at=rel(a.finished_at)))
        outcome.attempts.sort(key=lambda a: a.attempt)
        result.steps.append(outcome)


def judge(result: CaseResult, expect: Expect) -> None:
    """Check what the case found against what it expects: passed, or failed with the checks."""
    result.checks = evaluate_checks(expect, result)
    result.outcome = FAILED if result.failed_checks else PASSED


def broke(result: CaseResult, scenario: Scenario, exc: Exception) -> None:
    """A case that could not run is an error: a ScenarioError says why in the scenario's terms."""
    if isinstance(exc, ScenarioError):
        result.outcome, result.reason = ERROR, exc.message if exc.source == scenario.source else str(exc)
    else:
        result.outcome, result.reason = ERROR, f"{type(exc).__name__}: {exc}"


def _show(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _diff(expected: Any, actual: Any) -> str:
    lines = difflib.unified_diff(_show(expected).splitlines(), _show(actual).splitlines(), "expected", "actual",
                                 lineterm="")
    return "\n".join(lines)


def _equal(what: str, expected: Any, actual: Any) -> Check:
    ok = expected == actual
    return Check(what, ok, expected, actual, "" if ok else _diff(expected, actual))


def evaluate_checks(expect: Expect, result: CaseResult) -> list[Check]:
    checks: list[Check] = []
    if expect.status is not None:
        checks.append(_equal("run status", expect.status, result.run_status))
    if expect.error is not None:
        actual = result.run_error or ""
        checks.append(Check("run error contains", expect.error in actual, expect.error, actual))
    steps = {s.name: s for s in result.steps}
    for name, want in expect.steps.items():
        checks.extend(_step_checks(name, want, steps.get(name)))
    checks.extend(_order_checks(expect, steps))
    ends = [x.finished_at for s in result.steps for x in s.attempts if x.finished_at is not None]
    checks.extend(_bounds("run duration", max(ends) if ends else None, expect.min_duration_s, expect.max_duration_s))
    if expect.dead_letters is not None:
        checks.append(_equal("dead letters", expect.dead_letters, len(result.dead_letters)))
    if expect.runs is not None:
        checks.append(_equal("runs started", expect.runs, result.runs))
    if expect.ledger is not None:
        keys = sorted({k for row in expect.ledger for k in row})
        rows = [{k: row.get(k) for k in keys} for row in result.ledger]
        checks.append(_equal("schedule ledger", expect.ledger, rows))
    return checks


def _bounds(what: str, took: float | None, low: float | None, high: float | None) -> list[Check]:
    checks = []
    if high is not None:
        checks.append(Check(f"{what} at most", took is not None and took <= high, high, took))
    if low is not None:
        checks.append(Check(f"{what} at least", took is not None and took >= low, low, took))
    return checks


def _step_checks(name: str, want: StepExpect, step: StepOutcome | None) -> list[Check]:
    if step is None:
        return [Check(f"step {name}", False, "a step of the run", "no such step in the run")]
    checks = []
    if want.status is not None:
        checks.append(_equal(f"step {name} status", want.status, step.status))
    if want.attempts is not None:
        checks.append(_equal(f"step {name} attempts", want.attempts, len(step.attempts)))
    if want.output is not MISSING:
        checks.append(_equal(f"step {name} output", want.output, step.output))
    for path, value in want.match.items():
        try:
            checks.append(_equal(f"step {name} output {path}", value, json_path(step.output, path)))
        except ExpressionError as exc:
            checks.append(Check(f"step {name} output {path}", False, value, str(exc)))
    last = step.attempts[-1] if step.attempts else None
    if want.error is not None:
        actual = (last.error or "") if last else ""
        checks.append(Check(f"step {name} error contains", want.error in actual, want.error, actual))
    took = None
    if last is not None and last.finished_at is not None and last.started_at is not None:
        took = last.finished_at - last.started_at
    return checks + _bounds(f"step {name} duration", took, want.min_duration_s, want.max_duration_s)


def _order_checks(expect: Expect, steps: dict[str, StepOutcome]) -> list[Check]:
    checks = []
    for a, b in expect.order:
        first, then = steps.get(a), steps.get(b)
        ends = [x.finished_at for x in first.attempts if x.finished_at is not None] if first else []
        starts = [x.started_at for x in then.attempts if x.started_at is not None] if then else []
        done, began = max(ends, default=None), min(starts, default=None)
        ok = done is not None and began is not None and done <= began
        checks.append(Check(f"order {a} < {b}", ok, f"{a} finished before {b} started",
                            f"{a} finished at {done}, {b} started at {began}"))
    return checks
