"""The result monitor, checked number by number against a fixture of runs computed by hand (SQLite).

The window is the hour before NOW. In it: seven ``etl`` runs (steps extract and load) and two
``report`` runs (step render), one of them created at the very start of the window; before it, one
run of each workflow and a dead letter that must not count. Each run is written as its rows would
be: the steps with their latest attempt and its queued_at, and every recorded attempt, with queue
waits and durations in round milliseconds so that every percentile is known exactly.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from miniflow.ops.monitor.results import ErrorCount, Percentiles, ResultSummary, result_summary
from miniflow.persistence import AttemptRow, Database, DeadLetterRow, RunRow, StepRow
from miniflow.persistence import repository as repo
from miniflow.persistence.repository.monitor import percentile
from miniflow.protocol.states import RunStatus, StepStatus

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(hours=1)
S, F, C, R = RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.RUNNING

# run id -> (workflow, status, created, duration in seconds when it has ended)
RUNS: dict[str, tuple[str, RunStatus, datetime, float | None]] = {
    "e1": ("etl", S, NOW - timedelta(minutes=50), 10), "e2": ("etl", S, NOW - timedelta(minutes=49), 20),
    "e3": ("etl", F, NOW - timedelta(minutes=48), 30), "e4": ("etl", C, NOW - timedelta(minutes=47), 40),
    "e5": ("etl", R, NOW - timedelta(minutes=46), None), "e6": ("etl", F, NOW - timedelta(minutes=45), 60),
    "e7": ("etl", S, NOW - timedelta(minutes=44), 70),
    "r1": ("report", S, NOW - timedelta(minutes=10), 5), "r2": ("report", F, SINCE, 15),
    "old-e": ("etl", F, SINCE - timedelta(seconds=1), 1), "old-r": ("report", S, SINCE - timedelta(days=1), 99),
}
# (run, step) -> (status, latest attempt, first attempt of its budget, queued_at of the latest
# attempt in seconds after the run's creation, or None when never queued)
STEPS: dict[tuple[str, str], tuple[StepStatus, int, int, float | None]] = {
    ("e1", "extract"): (StepStatus.SUCCEEDED, 1, 1, 0.0), ("e1", "load"): (StepStatus.SUCCEEDED, 1, 1, 2.2),
    ("e2", "extract"): (StepStatus.SUCCEEDED, 2, 1, 1.5), ("e2", "load"): (StepStatus.SUCCEEDED, 1, 1, 3.2),
    ("e3", "extract"): (StepStatus.SUCCEEDED, 1, 1, 0.0), ("e3", "load"): (StepStatus.FAILED, 3, 1, 5.0),
    ("e4", "extract"): (StepStatus.CANCELLED, 1, 1, 0.0), ("e4", "load"): (StepStatus.SKIPPED, 0, 1, None),
    ("e5", "extract"): (StepStatus.SUCCEEDED, 1, 1, 0.0), ("e5", "load"): (StepStatus.QUEUED, 1, 1, 3.6),
    ("e6", "extract"): (StepStatus.FAILED, 1, 1, 0.0), ("e6", "load"): (StepStatus.SKIPPED, 0, 1, None),
    ("e7", "extract"): (StepStatus.SUCCEEDED, 2, 2, 10.0), ("e7", "load"): (StepStatus.SUCCEEDED, 1, 1, 15.0),
    ("r1", "render"): (StepStatus.SUCCEEDED, 1, 1, 0.0), ("r2", "render"): (StepStatus.FAILED, 1, 1, 0.0),
    ("old-e", "extract"): (StepStatus.FAILED, 1, 1, 0.0), ("old-e", "load"): (StepStatus.SKIPPED, 0, 1, None),
    ("old-r", "render"): (StepStatus.SUCCEEDED, 1, 1, 0.0),
}
# (run, step, attempt) -> (started, seconds after the run's creation; duration ms; error type, or
# "" for success)
ATTEMPTS: dict[tuple[str, str, int], tuple[float, float, str | None]] = {
    ("e1", "extract", 1): (0.1, 2000, ""), ("e1", "load", 1): (2.5, 3000, ""),  # waits 100, 300
    ("e2", "extract", 1): (0.05, 1000, "ValueError"), ("e2", "extract", 2): (1.6, 1500, ""),  # a retry: no wait
    ("e2", "load", 1): (3.4, 5000, ""),  # wait 200
    ("e3", "extract", 1): (0.4, 2500, ""),  # wait 400
    ("e3", "load", 1): (3.0, 1000, "ValueError"), ("e3", "load", 2): (4.0, 1000, "ValueError"),
    ("e3", "load", 3): (5.1, 6000, "Timeout"),  # a retry: no wait
    ("e5", "extract", 1): (0.5, 3000, ""),  # wait 500
    ("e6", "extract", 1): (0.0, 0, "Lost"),  # recorded by the reconciler, started = queued: no wait
    ("e7", "extract", 1): (0.1, 500, "KeyError"), ("e7", "extract", 2): (10.6, 4000, ""),  # run retried: wait 600
    ("e7", "load", 1): (15.7, 2000, ""),  # wait 700
    ("r1", "render", 1): (0.05, 4000, ""),  # wait 50
    ("r2", "render", 1): (0.15, 1000, None),  # wait 150, failed without an error type
    ("old-e", "extract", 1): (0.01, 999, "OldError"), ("old-r", "render", 1): (0.2, 888, ""),
}
# (reason code, archived at)
LETTERS = [("malformed", NOW - timedelta(minutes=5)), ("malformed", SINCE), ("unknown_workflow", NOW),
           ("bad_signature", NOW - timedelta(minutes=30)), ("bad_signature", NOW - timedelta(minutes=31)),
           ("malformed", SINCE - timedelta(microseconds=1))]


def fill(database: Database) -> None:
    """Write the fixture's rows through the repository, as the coordinator would have left them."""
    def at(run: str, seconds: float) -> datetime:
        return RUNS[run][2] + timedelta(seconds=seconds)

    with database.transaction() as conn:
        for run_id, (workflow, status, created, seconds) in RUNS.items():
            repo.insert_run(conn, RunRow(id=run_id, workflow=workflow, version=1, status=status, params={},
                                         idempotency_key=run_id, priority=0, created_at=created, started_at=created,
                                         finished_at=at(run_id, seconds) if seconds is not None else None))
        repo.insert_steps(conn, [
            StepRow(run_id, step, status, attempt=attempt, first_attempt=first,
                    queued_at=at(run_id, queued) if queued is not None else None)
            for (run_id, step), (status, attempt, first, queued) in STEPS.items()])
        for (run_id, step, attempt), (started, ms, error_type) in ATTEMPTS.items():
            start = at(run_id, started)
            end = start + timedelta(milliseconds=ms)
            repo.insert_attempt(conn, AttemptRow(run_id=run_id, step=step, attempt=attempt, ok=error_type == "",
                                                 started_at=start, finished_at=end, duration_ms=ms, recorded_at=end,
                                                 error=None if error_type == "" else "boom",
                                                 error_type=error_type or None))
        for code, created in LETTERS:
            repo.insert_dead_letter(conn, DeadLetterRow(queue="q", code=code, detail="d", raw=b"", created_at=created))


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path: Path = tmp_path_factory.mktemp("monitor") / "monitor.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    fill(db)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def summary(database: Database) -> ResultSummary:
    return result_summary(database, since=SINCE, top_errors=5)


def test_runs_are_counted_by_status_per_workflow_and_in_all(summary):
    etl, report = summary.workflows
    assert (etl.workflow, report.workflow) == ("etl", "report")
    assert etl.by_status == {"queued": 0, "running": 1, "succeeded": 3, "failed": 2, "cancelled": 1} and etl.runs == 7
    assert report.by_status == {"queued": 0, "running": 0, "succeeded": 1, "failed": 1, "cancelled": 0} \
        and report.runs == 2
    assert summary.by_status == {"queued": 0, "running": 1, "succeeded": 4, "failed": 3, "cancelled": 1} \
        and summary.runs == 9


def test_the_success_rate_counts_succeeded_out_of_completed_runs_leaving_cancelled_and_running_out(summary):
    etl, report = summary.workflows
    assert etl.success_rate == 3 / 5
    assert report.success_rate == 1 / 2
    assert summary.success_rate == 4 / 7


def test_run_duration_percentiles_are_of_the_completed_runs(summary):
    etl, report = summary.workflows
    # etl: 10, 20, 30, 60, 70 s (the cancelled run's 40 s and the running run are left out)
    assert etl.duration_ms == Percentiles(5, p50=30_000.0, p95=68_000.0, p99=69_600.0)
    assert report.duration_ms == Percentiles(2, p50=10_000.0, p95=14_500.0, p99=14_900.0)


def test_steps_are_counted_by_status_with_their_success_rate(summary):
    extract, load = summary.workflows[0].steps
    (render,) = summary.workflows[1].steps
    assert extract.step == "extract"
    assert extract.by_status == {"pending": 0, "queued": 0, "succeeded": 5, "failed": 1, "skipped": 0,
                                 "upstream_failed": 0, "cancelled": 1}
    assert load.by_status == {"pending": 0, "queued": 1, "succeeded": 3, "failed": 1, "skipped": 2,
                              "upstream_failed": 0, "cancelled": 0}
    assert (extract.success_rate, load.success_rate, render.success_rate) == (5 / 6, 3 / 4, 1 / 2)


def test_attempt_duration_percentiles_are_of_every_recorded_attempt(summary):
    extract, load = summary.workflows[0].steps
    (render,) = summary.workflows[1].steps
    # extract: 0, 500, 1000, 1500, 2000, 2500, 3000, 4000
    assert extract.duration_ms == Percentiles(8, p50=1750.0, p95=3650.0, p99=3930.0)
    # load: 1000, 1000, 2000, 3000, 5000, 6000
    assert load.duration_ms == Percentiles(6, p50=2500.0, p95=5750.0, p99=5950.0)
    assert render.duration_ms == Percentiles(2, p50=2500.0, p95=3850.0, p99=3970.0)
    assert (extract.attempts_recorded, extract.attempts_failed) == (8, 3)
    assert (load.attempts_recorded, load.attempts_failed) == (6, 3)


def test_queue_wait_is_measured_on_first_attempts_and_leaves_retries_and_lost_attempts_out(summary):
    extract, load = summary.workflows[0].steps
    (render,) = summary.workflows[1].steps
    # extract: e1 100, e3 400, e5 500, e7 600 (the first attempt of its run retry); not e2 (retried),
    # e4 (never started), e6 (lost)
    assert extract.queue_wait_ms == Percentiles(4, p50=450.0, p95=585.0, p99=597.0)
    # load: e1 300, e2 200, e7 700; not e3 (its third attempt), e5 (in flight), e4/e6 (skipped)
    assert load.queue_wait_ms == Percentiles(3, p50=300.0, p95=660.0, p99=692.0)
    assert render.queue_wait_ms == Percentiles(2, p50=100.0, p95=145.0, p99=149.0)


def test_attempts_per_step_count_the_dispatched_attempts_of_dispatched_steps(summary):
    extract, load = summary.workflows[0].steps
    (render,) = summary.workflows[1].steps
    assert (extract.attempts_mean, extract.attempts_max) == (9 / 7, 2)  # 1+2+1+1+1+1+2, all seven dispatched
    assert (load.attempts_mean, load.attempts_max) == (7 / 5, 3)  # 1+1+3+1+1; two skipped, never dispatched
    assert (render.attempts_mean, render.attempts_max) == (1.0, 1)


def test_top_errors_rank_failed_attempts_by_type_at_each_level(summary):
    etl, report = summary.workflows
    extract, load = etl.steps
    assert extract.top_errors == (ErrorCount("KeyError", 1), ErrorCount("Lost", 1), ErrorCount("ValueError", 1))
    assert load.top_errors == (ErrorCount("ValueError", 2), ErrorCount("Timeout", 1))
    assert etl.top_errors == (ErrorCount("ValueError", 3), ErrorCount("KeyError", 1), ErrorCount("Lost", 1),
                              ErrorCount("Timeout", 1))
    assert report.top_errors == (ErrorCount(None, 1),)
    assert summary.top_errors == (ErrorCount("ValueError", 3), ErrorCount("KeyError", 1), ErrorCount("Lost", 1),
                                  ErrorCount("Timeout", 1), ErrorCount(None, 1))


def test_top_errors_keeps_only_the_requested_number(database):
    short = result_summary(database, since=SINCE, top_errors=2)
    assert short.top_errors == (ErrorCount("ValueError", 3), ErrorCount("KeyError", 1))
    assert short.workflows[0].steps[0].top_errors == (ErrorCount("KeyError", 1), ErrorCount("Lost", 1))


def test_dead_letters_of_the_window_are_counted_by_reason_code_most_first(summary):
    assert summary.dead_letters == {"bad_signature": 2, "malformed": 2, "unknown_workflow": 1}
    assert list(summary.dead_letters) == ["bad_signature", "malformed", "unknown_workflow"]


def test_the_window_leaves_older_runs_and_letters_out_and_a_wider_one_takes_them_in(database, summary):
    assert "OldError" not in {e.error_type for e in summary.top_errors}
    wider = result_summary(database, since=SINCE - timedelta(days=2))
    etl, report = wider.workflows
    assert (etl.runs, etl.by_status["failed"], report.runs) == (8, 3, 3)
    assert ErrorCount("OldError", 1) in etl.top_errors
    assert wider.dead_letters["malformed"] == 3
    narrow = result_summary(database, since=NOW - timedelta(minutes=20))
    assert [(w.workflow, w.runs) for w in narrow.workflows] == [("report", 1)]


def test_the_workflow_filter_keeps_one_workflow_and_every_dead_letter(database, summary):
    only = result_summary(database, since=SINCE, workflow="report")
    assert only.workflow == "report"
    assert [w.workflow for w in only.workflows] == ["report"]
    assert only.workflows[0] == summary.workflows[1]
    assert (only.runs, only.success_rate, only.top_errors) == (2, 1 / 2, (ErrorCount(None, 1),))
    assert only.dead_letters == summary.dead_letters  # dead letters belong to no workflow


def test_a_named_workflow_without_runs_in_the_window_is_listed_with_zeros(database):
    none = result_summary(database, since=SINCE, workflow="nope")
    (nope,) = none.workflows
    assert (nope.workflow, nope.runs, nope.success_rate, nope.steps, nope.top_errors) == ("nope", 0, None, (), ())
    assert nope.duration_ms == Percentiles(0) and set(nope.by_status.values()) == {0}


def test_since_in_another_timezone_means_the_same_instant(database, summary):
    paris = SINCE.astimezone(timezone(timedelta(hours=2)))
    assert result_summary(database, since=paris).workflows == summary.workflows


def test_a_naive_since_is_refused(database):
    with pytest.raises(ValueError, match="aware"):
        result_summary(database, since=SINCE.replace(tzinfo=None))


def test_to_dict_is_plain_json(summary):
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["since"] == "2025-06-01T11:00:00+00:00"
    etl = data["workflows"][0]
    assert etl["duration_ms"] == {"count": 5, "p50": 30000.0, "p95": 68000.0, "p99": 69600.0}
    assert etl["steps"][1]["top_errors"][0] == {"error_type": "ValueError", "count": 2}
    assert data["dead_letters"] == {"bad_signature": 2, "malformed": 2, "unknown_workflow": 1}


@pytest.mark.parametrize("values", [[7.0], [1.0, 2.0], [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0],
                                    [float(v * v % 97) for v in range(250)]])
def test_percentile_interpolates_as_percentile_cont_does(values):
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    for fraction in (0.5, 0.95, 0.99):
        assert percentile(ordered, fraction) == pytest.approx(cuts[round(fraction * 100) - 1])
