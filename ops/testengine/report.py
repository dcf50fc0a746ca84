"""What a scenario suite found, for people at a terminal and for machines.

:func:`summary` prints the details of every failed or errored case (each failed check: what it
checked, what was expected, what was found, and how they differ), then one table row per case and
the totals line. :func:`to_json` gives the same facts as JSON data.

Every text that came from a scenario, a step or a user is shown, never obeyed: it goes into rich
``Text`` objects (so ``[bold]`` in an error is not markup) with its control characters made visible
(:func:`miniflow.ops.terminal.escape_controls`), on whatever console it is given.

The helpers :func:`show_value` and :func:`diff_of` are the one way every report (terminal, JUnit,
HTML) writes an expected or actual value and a check's difference.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..terminal import safe_text
from .results import ERROR, FAILED, OUTCOMES, PASSED, SKIPPED, CaseResult, Check, SuiteResult, attempt_error

SCHEMA_VERSION = 1
STYLE = {PASSED: "green", FAILED: "bold red", ERROR: "bold magenta", SKIPPED: "yellow"}
NOTE_LIMIT = 100


def show_value(value: Any, indent: int | None = None) -> str:
    """A value as JSON text (a string keeps its quotes, so ``""`` and ``null`` differ); what JSON
    cannot hold is shown as its ``str``."""
    try:
        return json.dumps(value, ensure_ascii=False, indent=indent, default=str)
    except ValueError:  # a circular structure
        return repr(value)


def diff_of(check: Check) -> str:
    """The check's own diff, or a unified diff of expected and actual when either spans lines."""
    if check.diff or check.ok:
        return check.diff
    expected, actual = show_value(check.expected, 2), show_value(check.actual, 2)
    if "\n" not in expected and "\n" not in actual:
        return ""
    lines = difflib.unified_diff(expected.splitlines(), actual.splitlines(), "expected", "actual", lineterm="")
    return "\n".join(lines)


def totals(suite: SuiteResult) -> dict[str, int]:
    return {"cases": len(suite.cases), **{outcome: suite.count(outcome) for outcome in OUTCOMES}}


def totals_line(suite: SuiteResult) -> str:
    """``2 passed, 1 failed in 1.25 s (embedded)``: the outcomes that occurred, in OUTCOMES order."""
    counts = totals(suite)
    parts = [f"{counts[o]} {o}" for o in OUTCOMES if counts[o]] or ["no cases"]
    return f"{', '.join(parts)} in {suite.wall_s:.2f} s ({suite.mode})"


def case_time(case: CaseResult) -> str:
    text = f"{case.wall_s:.2f} s"
    if case.virtual_s is not None:
        text += f" (virtual {case.virtual_s:g} s)"
    return text


def case_note(case: CaseResult) -> str:
    """One line on why a case did not pass: its reason, or its first failed check."""
    failed = case.failed_checks
    if case.reason:
        note = case.reason
    elif failed:
        first = failed[0]
        note = f"{first.what}: expected {show_value(first.expected)}, got {show_value(first.actual)}"
        if len(failed) > 1:
            note += f" (+{len(failed) - 1} more)"
    elif case.run_error:
        note = case.run_error
    else:
        return ""
    note = " ".join(note.split())
    return note if len(note) <= NOTE_LIMIT else note[:NOTE_LIMIT - 1] + "…"


def summary(suite: SuiteResult, console: Console, *, details: bool = True) -> None:
    """Print the failure details (unless ``details`` is false), the table of cases and the totals."""
    if details:
        for case in suite.cases:
            if case.outcome in (FAILED, ERROR):
                failure_details(case, console)
    table = Table(title=Text("scenario cases"), title_justify="left", show_lines=False)
    for header in ("outcome", "case", "time", "runs", "checks", "note"):
        table.add_column(Text(header), overflow="fold")
    for case in suite.cases:
        passed = sum(1 for c in case.checks if c.ok)
        table.add_row(Text(case.outcome.upper(), STYLE.get(case.outcome, "")), safe_text(case.id),
                      Text(case_time(case)), Text(str(case.runs)), Text(f"{passed}/{len(case.checks)}"),
                      safe_text(case_note(case), "dim"))
    console.print(table)
    worst = FAILED if suite.count(FAILED) else ERROR if suite.count(ERROR) else PASSED
    console.print(Text(totals_line(suite), STYLE[worst]))


def failure_details(case: CaseResult, console: Console) -> None:
    """What went wrong in one case: its reason and run error, each failed check, and the steps
    whose last attempt failed."""
    console.print(Text.assemble((f"{case.outcome.upper()} ", STYLE.get(case.outcome, "")),
                                safe_text(case.id, "bold"), safe_text(f"  ({case.source}:{case.line})", "dim")))
    facts = []
    if case.run_id:
        facts.append(f"run {case.run_id}")
    if case.run_status:
        facts.append(f"status {case.run_status}")
    if case.workflow:
        facts.append(f"workflow {case.workflow}")
    if facts:
        console.print(safe_text("  " + ", ".join(facts), "dim"))
    if case.reason:
        console.print(Text.assemble(("  reason: ", "bold"), safe_text(case.reason)))
    if case.run_error and case.run_error != case.reason:
        console.print(Text.assemble(("  run error: ", "bold"), safe_text(case.run_error)))
    for check in case.failed_checks:
        console.print(check_text(check))
    for step in case.steps:
        last = step.attempts[-1] if step.attempts else None
        if last is not None and last.error:
            head = f"  step {step.name} attempt {last.attempt} {last.status}: "
            console.print(Text.assemble(safe_text(head, "bold"), safe_text(attempt_error(last), "red")))
    console.print()


def check_text(check: Check) -> Text:
    """A failed check as lines: what, expected, actual and the diff (removed lines red, added green)."""
    out = Text()
    out.append("  ✗ ", "bold red")
    out.append_text(safe_text(check.what, "bold"))
    out.append("\n    expected: ", "dim")
    out.append_text(safe_text(show_value(check.expected), "green"))
    out.append("\n    actual:   ", "dim")
    out.append_text(safe_text(show_value(check.actual), "red"))
    diff = diff_of(check)
    if diff:
        out.append("\n    diff:", "dim")
        for line in diff.splitlines():
            style = "red" if line.startswith("-") else "green" if line.startswith("+") else ""
            out.append("\n      ")
            out.append_text(safe_text(line, style))
    return out


def to_json(suite: SuiteResult) -> dict[str, Any]:
    """The suite as JSON data: ``schema_version``, the totals, and each case's ``to_json()`` (which
    :meth:`CaseResult.from_json` reads back)."""
    return {"schema_version": SCHEMA_VERSION, "mode": suite.mode, "wall_s": suite.wall_s,
            "exit_code": suite.exit_code, "totals": totals(suite), "cases": [c.to_json() for c in suite.cases]}
