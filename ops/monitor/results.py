"""The result monitor: what the runs of a window came to, per workflow and per step.

``result_summary`` is the one implementation the CLI, the HTTP API and the web UI call; each face
shows the ``ResultSummary`` it returns (``to_dict()`` for JSON). The figures come from
``persistence.repository.monitor``, whose docstring says how each is computed; in short:

    runs by status   the runs created at or after ``since`` (running ones included)
    success rate     succeeded / (succeeded + failed); cancelled and running runs are not counted,
                     None when no run has completed
    duration         p50/p95/p99 of completed runs (workflow) or of recorded attempts (step), in ms
    queue wait       p50/p95/p99 from a step's dispatch to its attempt's start, first attempts only
    attempts         attempts dispatched per step that was dispatched (mean and max)
    top errors       failed attempts by error type, the most frequent first
    dead letters     archived rejections since ``since`` by reason code, of every workflow
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from miniflow.persistence import Database
from miniflow.persistence.repository import monitor
from miniflow.persistence.repository.monitor import Percentiles, StepCounts, WindowFigures
from miniflow.protocol.states import RunStatus, StepStatus

__all__ = [
    "ErrorCount", "Percentiles", "ResultSummary", "StepResults", "WorkflowResults", "result_summary", "summarise",
]


@dataclass(frozen=True, slots=True)
class ErrorCount:
    error_type: str | None  # None: a failed attempt recorded without a type
    count: int


@dataclass(frozen=True, slots=True)
class StepResults:
    step: str
    by_status: dict[str, int]  # every step status, zeros included
    success_rate: float | None  # succeeded / (succeeded + failed) steps
    attempts_recorded: int
    attempts_failed: int
    attempts_mean: float | None  # attempts dispatched per dispatched step
    attempts_max: int | None
    duration_ms: Percentiles  # of the recorded attempts
    queue_wait_ms: Percentiles
    top_errors: tuple[ErrorCount, ...]


@dataclass(frozen=True, slots=True)
class WorkflowResults:
    workflow: str
    runs: int
    by_status: dict[str, int]  # every run status, zeros included
    success_rate: float | None
    duration_ms: Percentiles  # of the completed runs
    top_errors: tuple[ErrorCount, ...]  # over all its steps
    steps: tuple[StepResults, ...]  # by step name


@dataclass(frozen=True, slots=True)
class ResultSummary:
    since: datetime
    workflow: str | None  # the filter; None: every workflow
    runs: int
    by_status: dict[str, int]
    success_rate: float | None
    workflows: tuple[WorkflowResults, ...]  # by name
    top_errors: tuple[ErrorCount, ...]
    dead_letters: dict[str, int]  # reason code -> letters, the most frequent first

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: datetimes as ISO 8601 UTC, everything else as it is."""
        out = asdict(self)
        out["since"] = self.since.astimezone(UTC).isoformat()
        return out


def result_summary(database: Database, *, since: datetime, workflow: str | None = None,
                   top_errors: int = 5) -> ResultSummary:
    """The results of the runs created at or after ``since`` (an aware datetime), of ``workflow``
    or of all; ``top_errors``: how many error types to list at each level. A named workflow is
    listed even when it has no runs in the window (all zeros)."""
    if top_errors < 0:
        raise ValueError(f"top_errors must be 0 or more, not {top_errors}")
    with database.connect() as conn:
        figures = monitor.window_figures(conn, since, workflow)
    return summarise(figures, since=since, workflow=workflow, top_errors=top_errors)


def summarise(figures: WindowFigures, *, since: datetime, workflow: str | None, top_errors: int) -> ResultSummary:
    """Shape a window's figures into the summary (pure; ``result_summary`` reads the figures)."""
    names = {w for w, _ in figures.runs_by_status} | ({workflow} if workflow is not None else set())
    workflows = tuple(_workflow(figures, name, top_errors) for name in sorted(names))
    totals: Counter[str] = Counter()
    for w in workflows:
        totals.update(w.by_status)
    errors: Counter[str | None] = Counter()
    for (_, _, error_type), n in figures.errors.items():
        errors[error_type] += n
    return ResultSummary(
        since=since, workflow=workflow, runs=sum(w.runs for w in workflows),
        by_status=_all_statuses(totals, RunStatus), success_rate=_success_rate(totals),
        workflows=workflows, top_errors=_top(errors, top_errors),
        dead_letters=dict(sorted(figures.dead_letters.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def _workflow(figures: WindowFigures, name: str, top_errors: int) -> WorkflowResults:
    by_status = _all_statuses({s: n for (w, s), n in figures.runs_by_status.items() if w == name}, RunStatus)
    errors: Counter[str | None] = Counter()
    for (w, _, error_type), n in figures.errors.items():
        if w == name:
            errors[error_type] += n
    steps = sorted(s for w, s in figures.steps if w == name)
    return WorkflowResults(
        workflow=name, runs=sum(by_status.values()), by_status=by_status, success_rate=_success_rate(by_status),
        duration_ms=figures.run_durations.get(name, Percentiles()), top_errors=_top(errors, top_errors),
        steps=tuple(_step(figures, name, step, top_errors) for step in steps),
    )


def _step(figures: WindowFigures, workflow: str, step: str, top_errors: int) -> StepResults:
    key = (workflow, step)
    counts = figures.steps.get(key, StepCounts())
    errors: Counter[str | None] = Counter({e: n for (w, s, e), n in figures.errors.items() if (w, s) == key})
    durations = figures.attempt_durations.get(key, Percentiles())
    by_status = _all_statuses(counts.by_status, StepStatus)
    return StepResults(
        step=step, by_status=by_status, success_rate=_success_rate(by_status),
        attempts_recorded=durations.count, attempts_failed=sum(errors.values()),
        attempts_mean=counts.attempts / counts.dispatched if counts.dispatched else None,
        attempts_max=counts.max_attempts if counts.dispatched else None,
        duration_ms=durations, queue_wait_ms=figures.queue_waits.get(key, Percentiles()),
        top_errors=_top(errors, top_errors),
    )


def _all_statuses(counts: Mapping[str, int], states: type[RunStatus] | type[StepStatus]) -> dict[str, int]:
    """Counts of every state, in the enum's order, zeros included (and any unknown stored state after)."""
    out = {str(state): counts.get(state, 0) for state in states}
    out.update({s: n for s, n in counts.items() if s not in out})
    return out


def _success_rate(by_status: Mapping[str, int]) -> float | None:
    succeeded, failed = by_status.get(RunStatus.SUCCEEDED, 0), by_status.get(RunStatus.FAILED, 0)
    return succeeded / (succeeded + failed) if succeeded + failed else None


def _top(errors: Counter[str | None], n: int) -> tuple[ErrorCount, ...]:
    """The ``n`` most frequent error types; ties by name, a missing type last."""
    ranked = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))
    return tuple(ErrorCount(e, c) for e, c in ranked[:n])
