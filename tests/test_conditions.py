"""Conditions (`when`): a step whose condition over params and the outputs it needs is false is
skipped, and so is every step that needs a skipped step; the run succeeds once everything that does
run has. On the embedded engine (tests/integration/test_wide_runs.py has the real services)."""

from __future__ import annotations

import pytest

from miniflow.coordinator import loads
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import DefinitionError

BRANCHES = """
name: branches
params: {x: {default: 3}}
steps:
  - {name: a, task: diamond.source}
  - {name: b, task: diamond.double, needs: [a], when: "inputs.a > 10"}
  - {name: c, task: diamond.square, needs: [a]}
  - {name: d, task: diamond.sum, needs: [b, c]}
  - {name: e, task: diamond.double, needs: [a]}
"""


def statuses(run) -> dict[str, str]:
    return {s.step: str(s.status) for s in run.steps}


def test_a_false_condition_skips_the_step_and_what_needs_it_and_the_run_succeeds(engine):
    engine.deploy(loads(BRANCHES))
    run = engine.wait(engine.submit("branches", {"x": 3}), timeout=30)
    assert run.status == "succeeded", run.error
    assert statuses(run) == {"a": "succeeded", "b": "skipped", "c": "succeeded", "d": "skipped", "e": "succeeded"}
    notes = {s.step: s.note for s in run.steps}
    assert notes["b"] == "skipped: its condition `inputs.a > 10` was false"
    assert notes["d"] == "skipped: it needs 'b', which was skipped"
    assert sorted(a.step for a in run.attempts) == ["a", "c", "e"]


def test_a_true_condition_runs_the_step(engine):
    engine.deploy(loads(BRANCHES))
    run = engine.wait(engine.submit("branches", {"x": 20}), timeout=30)
    assert run.status == "succeeded"
    assert {s.step: s.output for s in run.steps} == {"a": 20, "b": 40, "c": 400, "d": 440, "e": 40}


ROOTS = """
name: roots
params: {mode: {default: quick}}
steps:
  - {name: full, task: test.echo, when: "params.mode == 'full'"}
  - {name: after_full, task: test.echo, needs: [full]}
  - {name: quick, task: test.echo, when: "params.mode in ['quick', 'full']"}
"""


@pytest.mark.parametrize("mode,expected", [
    ("quick", {"full": "skipped", "after_full": "skipped", "quick": "succeeded"}),
    ("full", {"full": "succeeded", "after_full": "succeeded", "quick": "succeeded"}),
    ("none", {"full": "skipped", "after_full": "skipped", "quick": "skipped"}),
])
def test_conditions_of_steps_that_need_nothing_decide_at_the_start(engine, mode: str,
                                                                  expected: dict[str, str]) -> None:
    engine.deploy(loads(ROOTS))
    run = engine.wait(engine.submit("roots", {"mode": mode}), timeout=30)
    assert run.status == "succeeded", run.error
    assert statuses(run) == expected


def test_a_condition_that_cannot_be_evaluated_fails_the_run_naming_the_step(engine):
    engine.deploy(loads(BRANCHES.replace("inputs.a > 10", "inputs.a.rows > 1")))
    run = engine.wait(engine.submit("branches", {"x": 3}), timeout=30)
    assert run.status == "failed"
    assert "step 'b': its condition `inputs.a.rows > 1` could not be evaluated" in (run.error or "")
    assert statuses(run)["b"] == "failed"


def test_a_retried_run_decides_its_conditions_again(engine):
    text = BRANCHES.replace("{name: e, task: diamond.double, needs: [a]}",
                            "{name: e, task: test.flaky, config: {fail_times: 1}, needs: [a]}")
    engine.deploy(loads(text))
    failed = engine.wait(engine.submit("branches", {"x": 3}), timeout=30)
    assert failed.status == "failed" and statuses(failed)["e"] == "failed"
    engine.retry(failed.run_id)

    def ended():
        with engine.db.connect() as conn:
            again = repo.get_attempt(conn, failed.run_id, "e", 2)
        run = engine.run(failed.run_id)
        return run if again is not None and run is not None and run.status != "running" else None

    from miniflow.ops.polling import poll_until

    assert poll_until(ended, timeout=30).status == "succeeded"
    with engine.db.connect() as conn:
        steps = repo.get_steps(conn, failed.run_id)
    assert {n: str(r.status) for n, r in steps.items()}["b"] == "skipped"


@pytest.mark.parametrize("when,words", [
    ("inputs.a >", "'when': not a valid expression"),
    ("open('x')", "'when'"),
    ("secrets.x == 1", "'when' reads 'secrets'"),
])
def test_a_condition_is_checked_when_the_workflow_is_read(when: str, words: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        loads(BRANCHES.replace("inputs.a > 10", when))
    assert words in str(caught.value) and "b" in str(caught.value)


def test_a_workflow_without_conditions_keeps_its_stored_form() -> None:
    spec = loads(BRANCHES.replace(', when: "inputs.a > 10"', "")).to_spec()
    assert all("when" not in step for step in spec["steps"])
    assert loads(BRANCHES).to_spec()["steps"][1]["when"] == "inputs.a > 10"
