"""Map steps: a step run once per element of a list output of a step it needs, each element an
instance ``name[i]`` with its own attempts, at most ``concurrency`` out at once; downstream steps
get the list of results in order. On the embedded engine (tests/integration/test_map.py has the
real services)."""

from __future__ import annotations

from typing import Any

import pytest

from miniflow.coordinator import loads
from miniflow.coordinator.workflow import MapFailure, instance_name, instance_of
from miniflow.ops.polling import poll_until
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import DefinitionError, MessageRejected
from miniflow.protocol.messages import StepTask


def fan(n: int | None = None, *, items: list[Any] | None = None, concurrency: int = 1000, on_failure: str = "fail",
        fail: list[Any] | None = None, retries: int = 0, fail_times: int | None = None, extra: str = "") -> str:
    source = f"n: {n}" if items is None else f"items: {items!r}"
    failing = f", fail_items: {fail!r}" if fail else ""
    if fail_times is not None:
        failing += f", fail_times: {fail_times}"
    return f"""
name: fan
params: {{tag: {{default: t}}}}
steps:
  - {{name: split, task: test.range, config: {{{source}}}}}
  - {{name: side, task: test.echo}}
  - name: work
    task: test.element
    needs: [split, side]
    retries: {retries}
    backoff: {{initial: 0.01, max: 0.01}}
    config: {{tag: x{failing}}}
    map: {{over: split.items, concurrency: {concurrency}, on_failure: {on_failure}}}
  - {{name: join, task: test.echo, needs: [work]}}
{extra}"""


def steps_of(run: Any) -> dict[str, Any]:
    return {s.step: s for s in run.steps}


def test_each_element_runs_as_its_own_instance_and_the_next_step_gets_the_results_in_order(engine):
    engine.deploy(loads(fan(items=["a", "b", "c", {"k": 1}]).replace("tag: x", "tag: x, inputs: true")))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    assert run.status == "succeeded", run.error
    steps = steps_of(run)
    results = steps["join"].output["inputs"]["work"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["item"] for r in results] == ["a", "b", "c", {"k": 1}]
    # an element gets the outputs of the other needs, not the list it maps over again
    assert set(results[0]["inputs"]) == {"side"}
    assert {name for name in steps if name.startswith("work[")} == {f"work[{i}]" for i in range(4)}
    assert all(steps[f"work[{i}]"].status == "succeeded" and steps[f"work[{i}]"].attempt == 1 for i in range(4))
    assert steps["work"].output == results
    assert sorted(a.step for a in run.attempts if a.step.startswith("work")) == [f"work[{i}]" for i in range(4)]


def test_an_empty_list_succeeds_at_once_with_an_empty_list(engine):
    engine.deploy(loads(fan(0)))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    assert run.status == "succeeded", run.error
    steps = steps_of(run)
    assert steps["work"].output == [] and steps["join"].output["inputs"] == {"work": []}
    assert not [name for name in steps if name.startswith("work[")]


def test_a_cap_of_three_never_has_more_than_three_elements_out_and_runs_them_all(engine):
    engine.deploy(loads(fan(40, concurrency=3)))
    key = engine.submit("fan", {})
    peak = 0
    while True:
        with engine.db.connect() as conn:
            run_id = repo.run_id_for_key(conn, key)
            run = repo.get_run(conn, run_id) if run_id else None  # first: the steps read after are as new
            steps = repo.get_steps(conn, run_id) if run_id else {}
        out = [s for name, s in steps.items() if name.startswith("work[") and s.status == "queued"]
        peak = max(peak, len(out))
        if run is not None and run.status in ("succeeded", "failed", "cancelled"):
            break
    assert run.status == "succeeded", run.error
    assert 1 <= peak <= 3
    assert [r["item"] for r in steps["join"].output["inputs"]["work"]] == list(range(40))


def test_a_failing_element_fails_the_run_under_fail_and_cancels_or_skips_the_rest(engine):
    engine.deploy(loads(fan(30, concurrency=2, fail=[5])))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    assert run.status == "failed"
    assert run.error.startswith("step 'work' failed: its element 5 failed: step 'work[5]' failed after 1 attempt: "
                                "RuntimeError: element 5 failed"), run.error
    steps = steps_of(run)
    assert steps["work"].status == "failed" and steps["join"].status == "skipped"
    assert steps["work[5]"].status == "failed"
    later = [steps[f"work[{i}]"].status for i in range(7, 30)]
    assert set(later) <= {"skipped", "cancelled", "succeeded"} and "skipped" in later
    # with two out at once, element 5 went out beside 3 or 4: every other element before it had ended
    assert all(steps[f"work[{i}]"].status == "succeeded" for i in range(3))
    assert sorted(steps[f"work[{i}]"].status for i in (3, 4)) in (["succeeded", "succeeded"],
                                                                 ["cancelled", "succeeded"])


def test_under_continue_the_others_go_on_and_the_failed_element_is_null_in_the_list(engine):
    engine.deploy(loads(fan(12, concurrency=4, on_failure="continue", fail=[3, 8])))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    assert run.status == "succeeded", run.error
    steps = steps_of(run)
    results = steps["join"].output["inputs"]["work"]
    assert [r and r["item"] for r in results] == [0, 1, 2, None, 4, 5, 6, 7, None, 9, 10, 11]
    assert steps["work[3]"].status == "failed" and "element 3 failed" in steps["work[3]"].error
    assert "2 failed (on_failure: continue)" in steps["work"].note


def test_an_element_retries_on_its_own_budget(engine):
    engine.deploy(loads(fan(4, fail=[2], retries=2, fail_times=2)))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    assert run.status == "succeeded", run.error
    steps = steps_of(run)
    assert steps["work[2]"].attempt == 3 and steps["work[1]"].attempt == 1
    assert steps["join"].output["inputs"]["work"][2] == {"index": 2, "item": 2}


def test_a_retried_run_reruns_only_the_elements_that_failed(engine):
    engine.deploy(loads(fan(6, fail=[4], fail_times=1)))
    failed = engine.wait(engine.submit("fan", {}), timeout=30)
    assert failed.status == "failed"
    kept = {s.step for s in failed.steps if s.step.startswith("work[") and s.status == "succeeded"}
    assert kept and "work[4]" not in kept
    engine.retry(failed.run_id)
    poll_until(lambda: (r := engine.run(failed.run_id)) is not None and r.status == "succeeded", timeout=30,
               what="the retried run to succeed")
    run = engine.result(failed.run_id)
    steps = steps_of(run)
    assert {name: steps[name].attempt for name in steps if name.startswith("work[")} == {
        f"work[{i}]": 1 if f"work[{i}]" in kept else 2 for i in range(6)}  # what succeeded is not run again
    assert [r["item"] for r in steps["join"].output["inputs"]["work"]] == list(range(6))


def test_a_value_that_is_not_a_list_fails_the_map_step_naming_what_it_found(engine):
    engine.deploy(loads(fan(3).replace("over: split.items", "over: split")))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    assert run.status == "failed"
    assert "its map over split: that is dict, not a list" in run.error
    engine.deploy(loads(fan(3).replace("over: split.items", "over: split.nothing")))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    assert "the output of split has no field 'nothing'" in run.error


def test_more_than_ten_thousand_elements_fail_the_map_step_with_the_limit(engine):
    engine.deploy(loads(fan(10_001)))
    run = engine.wait(engine.submit("fan", {}), timeout=60)
    assert run.status == "failed"
    assert "10001 elements is more than the limit of 10000" in run.error


def test_a_condition_on_a_map_step_is_judged_before_it_spreads(engine):
    engine.deploy(loads(fan(5).replace("    map:", "    when: \"false\"\n    map:")))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    assert run.status == "succeeded", run.error
    steps = steps_of(run)
    assert steps["work"].status == "skipped" and not [n for n in steps if n.startswith("work[")]


@pytest.mark.parametrize(("text", "problem"), [
    ("map: nothing.items", "it must start with the name of a step this step needs"),
    ("map: {over: split.items, concurrency: 0}", "map 'concurrency' must be a whole number from 1 to 10000"),
    ("map: {over: split.items, on_failure: ignore}", "it must be one of fail, continue"),
    ("map: {over: split.items, size: 3}", "'map' must name a step it needs"),
    ("map: split..items", "an empty field name"),
    ("map: split.items\n    cache: true", "a map step cannot have a 'cache'"),
])
def test_a_bad_map_is_refused_at_deploy_naming_the_problem(text, problem):
    source = f"name: bad\nsteps:\n  - {{name: split, task: t}}\n  - name: work\n    task: t\n    needs: [split]\n" \
             f"    {text}\n"
    with pytest.raises(DefinitionError) as caught:
        loads(source)
    assert problem in str(caught.value) and "work" in str(caught.value)


def test_a_map_step_round_trips_through_its_stored_spec_and_names_its_instances():
    workflow = loads(fan(3, concurrency=7, on_failure="continue"))
    again = type(workflow).from_spec(workflow.to_spec())
    assert again.steps["work"].map == workflow.steps["work"].map
    spec = again.steps["work"].map
    assert spec is not None and spec.on_failure == MapFailure.CONTINUE and spec.concurrency == 7
    assert instance_of(instance_name("a.b-c", 12)) == ("a.b-c", 12) and instance_of("plain") is None
    assert workflow.spec("work[2]") is workflow.steps["work"]
    with pytest.raises(KeyError):
        workflow.spec("nothing[2]")


def test_a_step_message_with_a_bad_map_field_is_rejected():
    base = StepTask(run_id="r", workflow="w", step="s[1]", attempt=1, task="t", map={"index": 1, "item": "x"})
    assert StepTask.from_payload(base.to_payload()).map == {"index": 1, "item": "x"}
    for bad in ({"index": -1}, {"index": 10_000}, {"index": True}, {"index": 1, "other": 2}):
        with pytest.raises(MessageRejected) as caught:
            StepTask.from_payload({**base.to_payload(), "map": bad})
        assert caught.value.field == "map"


@pytest.mark.parametrize("policy", ["fail", "continue"])
def test_a_thousand_elements_with_one_failing_end_as_their_policy_says(engine, policy):
    engine.deploy(loads(fan(1000, concurrency=200, on_failure=policy, fail=[617])))
    run = engine.wait(engine.submit("fan", {}), timeout=120)
    steps = steps_of(run)
    instances = [s for name, s in steps.items() if name.startswith("work[")]
    assert len(instances) == 1000 and steps["work[617]"].status == "failed"
    if policy == "fail":
        assert run.status == "failed" and "its element 617 failed" in run.error
        assert steps["join"].status == "skipped"
        assert {s.status for s in instances} <= {"succeeded", "failed", "cancelled", "skipped"}
    else:
        assert run.status == "succeeded", run.error
        results = steps["join"].output["inputs"]["work"]
        assert len(results) == 1000 and results[617] is None
        assert [r["item"] for i, r in enumerate(results) if i != 617] == [i for i in range(1000) if i != 617]
        assert sum(s.status == "succeeded" for s in instances) == 999


def test_a_failed_map_settles_its_dependents_by_their_trigger_rules(engine):
    engine.deploy(loads(fan(20, concurrency=5, fail=[7], extra="  - {name: tidy, task: test.echo, needs: [work], "
                                                                   "trigger: all_done}\n")))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    steps = steps_of(run)
    assert run.status == "failed" and run.error.startswith("step 'work' failed: its element 7 failed")
    assert steps["work"].status == "failed" and steps["join"].status == "upstream_failed"
    assert steps["tidy"].status == "succeeded" and steps["tidy"].output["inputs"] == {"work": None}
    assert not [n for n, s in steps.items() if n.startswith("work[") and s.status == "queued"]


def test_a_map_over_a_value_that_is_not_a_list_fails_as_a_step_under_trigger_rules(engine):
    engine.deploy(loads(fan(3, extra="  - {name: tidy, task: test.echo, needs: [work], trigger: all_done}\n")
                        .replace("over: split.items", "over: split")))
    run = engine.wait(engine.submit("fan", {}), timeout=30)
    steps = steps_of(run)
    assert run.status == "failed" and "its map over split: that is dict, not a list" in run.error
    assert steps["work"].status == "failed" and steps["join"].status == "upstream_failed"
    assert steps["tidy"].status == "succeeded"  # the cleanup ran after the failed map


def test_instance_names_are_canonical():
    assert instance_of("fan[0]") == ("fan", 0) and instance_of("fan[9999]") == ("fan", 9999)
    for odd in ("fan[007]", "fan[²]", "fan[٣]", "fan[-1]", "fan[]", "fan[1", "fan1]"):
        assert instance_of(odd) is None, odd
