"""Trigger rules: a step says how the steps it needs must have ended for it to run (all_succeeded,
the default; all_done; any_failed; none_failed). With one in a workflow a failed step does not end
the run at once: its dependents are judged by their rules (those that ask for successes become
``upstream_failed``), the steps that run after failures run, and the run fails once every step
has ended. On the embedded engine (tests/integration/test_wide_runs.py has the real services)."""

from __future__ import annotations

import threading

import pytest

from miniflow.coordinator import loads
from miniflow.coordinator.state import trigger_verdict
from miniflow.coordinator.workflow import TriggerRule
from miniflow.ops.polling import poll_until
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import DefinitionError
from miniflow.protocol.states import StepStatus

from .steps_for_tests import GATES

CLEANUP = """
name: cleanup
steps:
  - {name: extract, task: test.flaky, config: {fail_times: 1}}
  - {name: load, task: test.echo, needs: [extract]}
  - {name: report, task: test.echo, needs: [load]}
  - {name: side, task: test.echo}
  - {name: cleanup, task: test.echo, needs: [report, side], trigger: all_done}
  - {name: alert, task: test.echo, needs: [load], trigger: any_failed}
  - {name: tidy, task: test.echo, needs: [side], trigger: any_failed}
  - {name: guard, task: test.echo, needs: [side, load], trigger: none_failed}
"""


def statuses(run) -> dict[str, str]:
    return {s.step: str(s.status) for s in run.steps}


def test_after_a_failure_the_steps_whose_rules_allow_it_run_and_the_run_fails_when_all_have_ended(engine):
    engine.deploy(loads(CLEANUP))
    run = engine.wait(engine.submit("cleanup", {}), timeout=30)
    assert run.status == "failed"
    assert (run.error or "").startswith("step 'extract' failed after 1 attempt: RuntimeError: flaky failure 1")
    assert statuses(run) == {"extract": "failed", "load": "upstream_failed", "report": "upstream_failed",
                             "side": "succeeded", "cleanup": "succeeded", "alert": "succeeded", "tidy": "skipped",
                             "guard": "upstream_failed"}
    notes = {s.step: s.note for s in run.steps}
    assert notes["load"] == "not run: it needs 'extract', which failed"
    assert notes["report"] == "not run: it needs 'load', which did not run because of a failure"
    assert notes["tidy"] == "skipped: its trigger is any_failed, and none of the steps it needs failed"
    assert sorted(a.step for a in run.attempts) == ["alert", "cleanup", "extract", "side"]
    # a step run after a failure gets the outputs of the needs that have one, and None for the others
    inputs = {s.step: s.output["inputs"] for s in run.steps if s.step in ("cleanup", "alert")}
    assert inputs == {"cleanup": {"report": None, "side": {"params": {}, "inputs": {}, "key": inputs["cleanup"]
                                                          ["side"]["key"]}}, "alert": {"load": None}}


def test_when_nothing_fails_any_failed_steps_are_skipped_and_the_run_succeeds(engine):
    engine.deploy(loads(CLEANUP.replace("fail_times: 1", "fail_times: 0")))
    run = engine.wait(engine.submit("cleanup", {}), timeout=30)
    assert run.status == "succeeded", run.error
    assert run.error is None
    assert statuses(run) == {"extract": "succeeded", "load": "succeeded", "report": "succeeded",
                             "side": "succeeded", "cleanup": "succeeded", "alert": "skipped", "tidy": "skipped",
                             "guard": "succeeded"}


def test_none_failed_runs_after_a_skipped_need_where_all_succeeded_does_not(engine):
    engine.deploy(loads("""
name: optional
steps:
  - {name: a, task: test.echo}
  - {name: maybe, task: test.echo, needs: [a], when: "false"}
  - {name: strict, task: test.echo, needs: [a, maybe]}
  - {name: lenient, task: test.echo, needs: [a, maybe], trigger: none_failed}
"""))
    run = engine.wait(engine.submit("optional", {}), timeout=30)
    assert run.status == "succeeded", run.error
    assert statuses(run) == {"a": "succeeded", "maybe": "skipped", "strict": "skipped", "lenient": "succeeded"}


def test_a_retried_run_reruns_what_failed_and_what_did_not_run_for_it(engine):
    engine.deploy(loads(CLEANUP))
    failed = engine.wait(engine.submit("cleanup", {}), timeout=30)
    assert failed.status == "failed"
    engine.retry(failed.run_id)

    def ended():  # the retry is a message: the run has been re-run once extract's attempt 2 exists
        with engine.db.connect() as conn:
            again = repo.get_attempt(conn, failed.run_id, "extract", 2)
        run = engine.run(failed.run_id)
        return run if again is not None and run is not None and run.status != "running" else None

    run = poll_until(ended, timeout=30)
    assert run.status == "succeeded", run.error
    with engine.db.connect() as conn:
        steps = repo.get_steps(conn, failed.run_id)
    # what failed, and everything after it, is judged again: as if nothing had failed
    assert {name: str(row.status) for name, row in steps.items()} == {
        "extract": "succeeded", "load": "succeeded", "report": "succeeded", "side": "succeeded",
        "cleanup": "succeeded", "alert": "skipped", "tidy": "skipped", "guard": "succeeded"}
    with engine.db.connect() as conn:
        assert repo.get_attempt(conn, failed.run_id, "cleanup", 2) is not None  # it ran again, after report
        assert repo.get_attempt(conn, failed.run_id, "side", 2) is None  # what succeeded before does not


def test_without_trigger_rules_a_failure_still_ends_the_run_at_once(engine):
    engine.deploy(loads("""
name: strict
steps:
  - {name: bad, task: test.boom}
  - {name: after, task: test.echo, needs: [bad]}
  - {name: slow, task: test.gate, config: {gate: trigger-strict}}
"""))
    try:
        run = engine.wait(engine.submit("strict", {}), timeout=20)
    finally:
        GATES.setdefault("trigger-strict", threading.Event()).set()
    assert run.status == "failed"
    assert statuses(run) == {"bad": "failed", "after": "skipped", "slow": "cancelled"}


@pytest.mark.parametrize("rule,needs,expected", [
    (TriggerRule.ALL_SUCCEEDED, {"a": StepStatus.SUCCEEDED, "b": StepStatus.SUCCEEDED}, None),
    (TriggerRule.ALL_SUCCEEDED, {"a": StepStatus.SKIPPED, "b": StepStatus.FAILED}, StepStatus.UPSTREAM_FAILED),
    (TriggerRule.ALL_SUCCEEDED, {"a": StepStatus.SUCCEEDED, "b": StepStatus.SKIPPED}, StepStatus.SKIPPED),
    (TriggerRule.ALL_DONE, {"a": StepStatus.FAILED, "b": StepStatus.SKIPPED}, None),
    (TriggerRule.ANY_FAILED, {"a": StepStatus.SUCCEEDED, "b": StepStatus.UPSTREAM_FAILED}, None),
    (TriggerRule.ANY_FAILED, {"a": StepStatus.SUCCEEDED, "b": StepStatus.SKIPPED}, StepStatus.SKIPPED),
    (TriggerRule.NONE_FAILED, {"a": StepStatus.SUCCEEDED, "b": StepStatus.SKIPPED}, None),
    (TriggerRule.NONE_FAILED, {"a": StepStatus.FAILED}, StepStatus.UPSTREAM_FAILED),
])
def test_the_verdict_of_each_rule(rule, needs, expected) -> None:
    verdict = trigger_verdict(rule, needs)
    assert (verdict[0] if verdict else None) == expected


@pytest.mark.parametrize("step,words", [
    ("{name: b, task: test.echo, needs: [a], trigger: sometimes}",
     "step 'b': 'trigger' is 'sometimes'; it must be one of all_succeeded, all_done, any_failed, none_failed"),
    ("{name: b, task: test.echo, trigger: all_done}", "'trigger: all_done' on a step that needs nothing"),
    ("{name: b, task: test.echo, needs: [a], trigger: [all_done]}", "'trigger' is ['all_done']"),
])
def test_a_trigger_rule_is_checked_when_the_workflow_is_read(step: str, words: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        loads(f"name: w\nsteps:\n  - {{name: a, task: test.echo}}\n  - {step}\n")
    assert words in str(caught.value)


def test_a_workflow_without_trigger_rules_keeps_its_stored_form() -> None:
    assert all("trigger" not in step for step in loads(CLEANUP.replace(", trigger: all_done", "")
                                                       .replace(", trigger: any_failed", "")
                                                       .replace(", trigger: none_failed", "")).to_spec()["steps"])
    stored = loads(CLEANUP).to_spec()
    assert {s["name"]: s.get("trigger") for s in stored["steps"]}["cleanup"] == "all_done"
    assert loads(CLEANUP).tolerates_failure and not loads(CLEANUP.replace("trigger", "when").replace(
        "all_done", "'true'").replace("any_failed", "'true'").replace("none_failed", "'true'")).tolerates_failure
