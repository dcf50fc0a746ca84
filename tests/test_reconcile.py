"""The reconciler: what lost messages leave behind after outages longer than the retries.

Driven on the coordinator directly (SQLite, a clock we move), so nothing is ever delivered: exactly
the state a dead-lettered step_finished or a lost step message leaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from miniflow.coordinator import Coordinator, Reconciler, Results, loads
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.protocol.messages import StartWorkflow, StepResult
from miniflow.protocol.names import QueueNames

CHAIN = """
name: chain
steps:
  - {name: first, task: x.first, timeout: 30, retries: 1, backoff: {initial: 1, jitter: 0}}
  - {name: second, task: x.second, needs: [first]}
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def setup(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'reconcile.db'}")
    db.upgrade()
    clock = Clock()
    coordinator = Coordinator(QueueNames("rc"), clock=clock, result_grace_s=60)
    with db.transaction() as conn:
        coordinator.catalog.deploy(conn, loads(CHAIN))
        run_id = coordinator.start(conn, StartWorkflow(workflow="chain", idempotency_key="k1"), "m1").run_id
    yield db, clock, coordinator, run_id
    db.dispose()


def steps(db: Database, run_id: str) -> dict[str, tuple[str, int]]:
    with db.connect() as conn:
        return {name: (row.status, row.attempt) for name, row in repo.get_steps(conn, run_id).items()}


def test_an_attempt_recorded_but_never_advanced_is_advanced(setup):
    db, clock, coordinator, run_id = setup
    now = clock.now.timestamp()
    with db.transaction() as conn:  # the results role records it; its step_finished is then lost
        Results(coordinator).record(conn, StepResult(run_id=run_id, step="first", attempt=1, ok=True, output=1,
                                                   node="n", started_at=now, finished_at=now))
    assert steps(db, run_id)["first"] == ("queued", 1)
    with db.connect() as conn:
        assert repo.unadvanced_attempts(conn, clock.now - timedelta(seconds=1)) == []  # too recent yet
        found = repo.unadvanced_attempts(conn, clock.now + timedelta(seconds=1))
    assert found == [(run_id, "first", 1)]
    with db.transaction() as conn:
        outgoing = Reconciler(coordinator).unadvanced(conn, *found[0])
    assert outgoing is not None and [o.queue_name for o in outgoing] == ["rc.steps"]  # `second` dispatched
    assert steps(db, run_id) == {"first": ("succeeded", 1), "second": ("queued", 1)}
    with db.connect() as conn:  # a finished step leaves the reconciler's index
        assert repo.get_steps(conn, run_id)["first"].result_due_at is None
    with db.transaction() as conn:  # a second pass (or another coordinator) finds nothing to do
        assert Reconciler(coordinator).unadvanced(conn, *found[0]) is None
    with db.connect() as conn:
        assert repo.unadvanced_attempts(conn, clock.now + timedelta(seconds=1)) == []


def test_an_attempt_with_no_result_past_its_deadline_is_recorded_lost_and_retried(setup):
    db, clock, coordinator, run_id = setup
    with db.connect() as conn:
        assert repo.overdue_results(conn, clock.now + timedelta(seconds=89)) == []  # timeout 30 + grace 60
        found = repo.overdue_results(conn, clock.now + timedelta(seconds=91))
    assert found == [(run_id, "first", 1)]
    clock.now += timedelta(seconds=91)
    with db.transaction() as conn:
        outgoing = Reconciler(coordinator).overdue(conn, *found[0])
    assert outgoing is not None
    assert len(outgoing) == 1 and outgoing[0].delay_ms == 1000  # retried under the step's policy
    assert steps(db, run_id)["first"] == ("queued", 2)
    with db.connect() as conn:
        lost = repo.get_attempt(conn, run_id, "first", 1)
        assert repo.get_steps(conn, run_id)["second"].result_due_at is None  # never queued
    assert lost is not None and lost.error is not None
    assert lost.ok is False and lost.error_type == "Lost" and "was lost" in lost.error

    # the real result of attempt 1 arriving now is a duplicate: fenced
    now = clock.now.timestamp()
    with db.transaction() as conn:
        assert Results(coordinator).record(conn, StepResult(run_id=run_id, step="first", attempt=1, ok=True,
                                                          output=1, node="late", started_at=now, finished_at=now),
                                         advance=True) == []
    # attempt 2 lost as well: its deadline counts from its own dispatch (delay + timeout + grace)
    with db.connect() as conn:
        assert repo.overdue_results(conn, clock.now + timedelta(seconds=90)) == []
        again = repo.overdue_results(conn, clock.now + timedelta(seconds=92))
    clock.now += timedelta(seconds=92)
    with db.transaction() as conn:
        assert Reconciler(coordinator).overdue(conn, *again[0]) == []
    with db.connect() as conn:
        run = repo.get_run(conn, run_id)
    assert run is not None and run.error is not None
    assert run.status == "failed" and "was lost" in run.error
    assert steps(db, run_id)["second"][0] == "skipped"


def test_a_result_that_arrives_before_the_repair_wins(setup):
    db, clock, coordinator, run_id = setup
    clock.now += timedelta(seconds=91)
    with db.connect() as conn:
        found = repo.overdue_results(conn, clock.now)
    now = clock.now.timestamp()
    with db.transaction() as conn:
        Results(coordinator).record(conn, StepResult(run_id=run_id, step="first", attempt=1, ok=True, output=1,
                                                   node="n", started_at=now, finished_at=now), advance=True)
    with db.transaction() as conn:  # the reconciler read it as overdue a moment before
        assert Reconciler(coordinator).overdue(conn, *found[0]) is None
    assert steps(db, run_id) == {"first": ("succeeded", 1), "second": ("queued", 1)}


def test_handled_retry_ids_are_forgotten_after_their_keep_time(setup):
    db, clock, coordinator, run_id = setup
    with db.transaction() as conn:
        for i in range(5):
            assert repo.mark_handled(conn, f"old-{i}", "retry_run", run_id, clock.now - timedelta(days=40))
        assert repo.mark_handled(conn, "recent", "retry_run", run_id, clock.now)
    with db.transaction() as conn:
        assert repo.prune_handled(conn, clock.now - timedelta(days=30), limit=3) == 3
    with db.transaction() as conn:
        assert repo.prune_handled(conn, clock.now - timedelta(days=30)) == 2
    with db.connect() as conn:
        assert repo.request_handled(conn, "recent") and not repo.request_handled(conn, "old-0")
