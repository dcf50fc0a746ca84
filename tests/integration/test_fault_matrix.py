"""The guarantees under faults (issue: nothing lost, nothing recorded twice). Each test runs one row
of the matrix and records its figures in reports/faults.json (`make faults` turns them into
docs/reliability.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import ROOT, query
from .fault_matrix import Outcome, record, run_scenario
from .private_services import Broker, Database

# Every fault here happens to the session's private RabbitMQ and Postgres; the machine's own must
# answer throughout (shared_services_answer fails the test otherwise).
pytestmark = pytest.mark.usefixtures("shared_services_answer")


def assert_guarantees(outcome: Outcome) -> None:
    record(outcome)
    assert outcome.runs > 0
    assert outcome.lost == 0, outcome
    assert outcome.duplicates == 0, outcome
    assert outcome.non_terminal == 0, outcome
    assert outcome.failed_runs == 0, outcome
    assert outcome.outbox_left == 0, outcome
    assert outcome.queued_left == 0, outcome
    assert outcome.dead_letters == 0, outcome


CRASH_POINTS = [
    ("executor.after_body", "executor", "an executor SIGKILLs itself after a step body, before reporting"),
    ("results.after_commit", "coordinator", "a results process SIGKILLs itself after its commit, before notifying"),
    ("coordinator.after_commit", "coordinator",
     "a coordinator SIGKILLs itself after its commit, before publishing"),
    ("coordinator.after_publish", "coordinator",
     "a coordinator SIGKILLs itself after publishing, before its outbox rows are deleted"),
]


CACHED_DIAMOND = """name: diamond-cached
params: {x: {default: 3}}
steps:
  - {name: a, task: diamond.source, cache: {ttl: 3600}}
  - {name: b, task: diamond.double, needs: [a], cache: {ttl: 3600}}
  - {name: c, task: diamond.square, needs: [a]}
  - {name: d, task: diamond.sum, needs: [b, c]}
"""


def test_cached_steps_lose_nothing_and_record_nothing_twice_when_a_coordinator_is_killed(fault_env,
                                                                                        tmp_path: Path):
    """The runs share one cache key: the first stores its outputs, the others are served from the
    cache, while a coordinator is killed after a commit (hits are recorded in the transaction that
    would have dispatched; a success is stored in the one that records it)."""
    definition = tmp_path / "diamond-cached.yaml"
    definition.write_text(CACHED_DIAMOND)
    outcome = run_scenario(fault_env, tmp_path, "cache.coordinator.after_commit",
                           "a coordinator SIGKILLs itself after its commit, on runs served from the result cache",
                           coordinator_fault="coordinator.after_commit", definition=definition,
                           workflow="diamond-cached")
    assert outcome.restarts >= 1, "the fault point was never reached"
    assert_guarantees(outcome)
    served = query(fault_env["MINIFLOW_DATABASE_URL"], "select count(*) from step_attempts where node = 'cache'")
    assert served[0][0] > 0, "no run was served from the cache"


def test_map_steps_lose_nothing_and_record_nothing_twice_when_a_coordinator_is_killed(fault_env, tmp_path: Path):
    """Runs of examples/fan_out.yaml (a map over ten numbers, at most 50 elements out at once) while
    a coordinator is killed after a commit: every element is recorded once, every run ends, and
    every total is the sum of the squares (no element lost, none counted twice)."""
    outcome = run_scenario(fault_env, tmp_path, "map.coordinator.after_commit",
                           "a coordinator SIGKILLs itself after its commit, on runs of a map step",
                           coordinator_fault="coordinator.after_commit", definition=ROOT / "examples" / "fan_out.yaml",
                           workflow="fan-out", params={})
    assert outcome.restarts >= 1, "the fault point was never reached"
    assert_guarantees(outcome)
    totals = query(fault_env["MINIFLOW_DATABASE_URL"], "select s.output from run_steps s join runs r "
                   "on r.id = s.run_id where r.workflow = 'fan-out' and s.step = 'total'")
    assert totals and all(t == {"count": 10, "sum": 385} for (t,) in totals), totals[:3]


@pytest.mark.parametrize("point, role, injected", CRASH_POINTS, ids=[p for p, _, _ in CRASH_POINTS])
def test_a_process_killed_at_a_crash_point_loses_nothing_and_records_nothing_twice(fault_env, tmp_path: Path, point,
                                                                                  role, injected):
    outcome = run_scenario(fault_env, tmp_path, point, injected,
                           coordinator_fault=point if role == "coordinator" else None,
                           executor_fault=point if role == "executor" else None)
    assert outcome.restarts >= 1, "the fault point was never reached"
    assert_guarantees(outcome)


def test_rabbitmq_stopped_during_a_burst_of_starts_loses_no_confirmed_start(fault_env, private_services,
                                                                           tmp_path: Path):
    broker: Broker = private_services[0]

    def stop_app_for_a_while() -> None:
        time.sleep(0.4)  # the burst (60 starts, one every 20 ms) is under way
        try:
            broker.stop_app()
            time.sleep(10)
        finally:
            broker.start_app()

    outcome = run_scenario(fault_env, tmp_path, "rabbitmq.stop_app",
                           "rabbitmqctl stop_app (a private node) for 10 s during a burst of starts, then start_app",
                           runs=60, pace_s=0.02, inject=stop_app_for_a_while)
    assert_guarantees(outcome)


def test_postgres_restarted_under_load_loses_nothing(fault_env, private_services, tmp_path: Path):
    database: Database = private_services[1]

    def restart() -> None:
        time.sleep(0.4)  # starts are flowing and runs are going
        database.restart()

    outcome = run_scenario(fault_env, tmp_path, "postgres.restart",
                           "the (private) Postgres restarted while runs are going", runs=60, pace_s=0.02,
                           inject=restart)
    assert_guarantees(outcome)
