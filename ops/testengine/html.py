"""A suite's results as one self-contained HTML file: the totals, then each case with its outcome, its
failed checks (expected, actual, diff), the workflow's DAG as inline SVG coloured by each step's
status, the timeline of every attempt and the steps' outputs as JSON (masked before they got here).

The file needs nothing else: the CSS is inline, there is no script, no font and no URL to fetch, and
its Content-Security-Policy forbids loading anything, so it can be kept as a CI artifact and opened
anywhere. The template is autoescaped, and every value it prints also has its control characters
made visible (``\\x1b``), so a step named ``</svg><script>`` is shown as that text.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from ..terminal import escape_controls
from ..ui.filters import status_class
from ..ui.graph import NODE_H, NODE_W, label, layout
from .report import case_note, case_time, diff_of, show_value, totals, totals_line
from .results import OUTCOMES, CaseResult, Check, StepOutcome, SuiteResult, attempt_error

TEMPLATES = Path(__file__).with_name("templates")
TIMELINE_W = 560  # the drawing width of a case's timeline, in pixels
LANE_W = 170  # the step names left of it
ROW_H = 22
TICKS = 4
OUTPUT_LIMIT = 20_000  # characters of one step's output JSON shown


def write_html(suite: SuiteResult, path: str | Path) -> None:
    """Write the suite's HTML report (UTF-8; a lone surrogate is written as its escape) to ``path``."""
    Path(path).write_text(render_html(suite), encoding="utf-8", errors="backslashreplace")


def render_html(suite: SuiteResult) -> str:
    """The suite's HTML report as text."""
    counts = totals(suite)
    return _environment().get_template("report.html").render(
        suite=suite, totals_line=totals_line(suite), counts=[(o, counts[o]) for o in OUTCOMES],
        cases=[case_view(case, index) for index, case in enumerate(suite.cases, 1)],
        node_w=NODE_W, node_h=NODE_H, lane_w=LANE_W)


@functools.cache
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, finalize=_visible)


def _visible(value: Any) -> Any:
    """Every printed value: control characters as visible escapes (then autoescape makes it HTML)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return escape_controls(value)
    return value


def outcome_class(outcome: str) -> str:
    return f"out-{outcome}" if outcome in OUTCOMES else "out-other"


def case_view(case: CaseResult, index: int) -> dict[str, Any]:
    """What the template shows of one case (already computed: the template only prints)."""
    statuses = {s.name: s.status for s in case.steps}
    return {
        "case": case, "index": index, "outcome_class": outcome_class(case.outcome), "time": case_time(case),
        "note": case_note(case), "held": sum(1 for c in case.checks if c.ok),
        "failed": [check_view(c) for c in case.failed_checks],
        "passed": [{"what": c.what, "actual": show_value(c.actual)} for c in case.checks if c.ok],
        "dag": dag(case.steps), "statuses": statuses, "timeline": timeline(case),
        "steps": [step_view(s) for s in case.steps],
        "dead_letters": show_value(case.dead_letters, 2) if case.dead_letters else "",
        "ledger": show_value(case.ledger, 2) if case.ledger else "",
    }


def check_view(check: Check) -> dict[str, Any]:
    lines = []
    for line in diff_of(check).splitlines():
        kind = "del" if line.startswith("-") else "add" if line.startswith("+") else "same"
        lines.append((kind, line))
    return {"what": check.what, "expected": show_value(check.expected, 2), "actual": show_value(check.actual, 2),
            "diff": lines}


def step_view(step: StepOutcome) -> dict[str, Any]:
    last = step.attempts[-1] if step.attempts else None
    output = show_value(step.output, 2) if step.output is not None else ""
    if len(output) > OUTPUT_LIMIT:
        output = output[:OUTPUT_LIMIT] + f"\n… ({len(output) - OUTPUT_LIMIT} more characters)"
    error = attempt_error(last) if last is not None else ""
    return {"name": step.name, "status": step.status, "status_class": status_class(step.status),
            "stubbed": step.stubbed, "attempts": len(step.attempts), "node": last.node if last else None,
            "error": error, "output": output}


def dag(steps: list[StepOutcome]) -> dict[str, Any] | None:
    """The DAG's layout and each node's classes; None when it is not drawn (no steps, or too many)."""
    drawn = layout([s.name for s in steps], [(need, s.name) for s in steps for need in s.needs])
    if drawn is None:
        return None
    by_name = {s.name: s for s in steps}
    nodes = []
    for n in drawn.nodes:
        step = by_name[n.id]
        classes = f"node {status_class(step.status)}" + (" stubbed" if step.stubbed else "")
        nodes.append({"id": n.id, "x": n.x, "y": n.y, "label": n.label, "classes": classes,
                      "title": f"{n.id}: {step.status}" + (" (stubbed)" if step.stubbed else "")})
    return {"width": drawn.width, "height": drawn.height, "edges": [d for _, _, d in drawn.edges if d],
            "nodes": nodes}


def timeline(case: CaseResult) -> dict[str, Any] | None:
    """Per step, a bar per attempt from its start to its finish, in seconds after the run was created
    (virtual seconds in embedded mode); None when no attempt has a start time."""
    timed = [a for s in case.steps for a in s.attempts if a.started_at is not None]
    if not timed:
        return None
    span = max(max(a.finished_at if a.finished_at is not None else a.started_at or 0.0 for a in timed), 0.001)
    scale = TIMELINE_W / span

    def x(at: float) -> float:
        return round(max(0.0, min(TIMELINE_W, at * scale)), 1)

    rows = []
    for step in case.steps:
        bars = []
        for a in step.attempts:
            if a.started_at is None:
                continue
            end = a.finished_at if a.finished_at is not None else span
            kind = "ok" if a.status == "succeeded" else "fail" if a.status == "failed" else "other"
            took = f"{end - a.started_at:.3f} s" if a.finished_at is not None else "unfinished"
            where = f" on {a.node}" if a.node else ""
            bars.append({"x": x(a.started_at), "w": max(1.0, x(end) - x(a.started_at)), "kind": kind,
                         "title": f"attempt {a.attempt} {a.status}{where}: {a.started_at:.3f} s +{took}"})
        rows.append({"step": label(step.name, 24), "name": step.name, "bars": bars})
    virtual = case.mode == "embedded" or case.virtual_s is not None
    return {"rows": rows, "width": TIMELINE_W, "height": ROW_H * len(rows) + 28, "span": f"{span:g}",
            "ticks": [(round(TIMELINE_W * i / TICKS, 1), f"{span * i / TICKS:.3g}") for i in range(TICKS + 1)],
            "unit": "virtual seconds after the run was created (embedded mode: the clock is simulated)"
            if virtual else "seconds after the run was created", "virtual": virtual}
