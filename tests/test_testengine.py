"""The test engine's own tests: scenarios with stubs, faults and assertions run embedded on the
virtual clock, their validation errors, and `miniflow test`'s exit codes and reports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from miniflow.coordinator.expressions import ExpressionError, evaluate
from miniflow.ops.cli import cli
from miniflow.ops.testengine import Expect, Fault, Scenario, ScenarioError, StepExpect, Stub, run_scenarios
from miniflow.ops.testengine.checks import json_path
from miniflow.ops.testengine.loader import load_file
from miniflow.ops.testengine.results import ERROR, FAILED, PASSED, SKIPPED

WORKFLOW = """
name: pair
timeout: {timeout}
steps:
  - name: a
    task: diamond.source
    retries: 3
    timeout: 30
    backoff: {{initial: 600, max: 600, jitter: 0}}
  - {{name: b, task: diamond.double, needs: [a]}}
"""


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "pair.yaml"
    path.write_text(WORKFLOW.format(timeout="null"))
    return path


def scenario(workflow: Path, **fields: object) -> Scenario:
    return Scenario(name=str(fields.pop("name", "case")), workflow=workflow, steps_modules=["examples.steps"],
                    params={"x": 4}, **fields)  # type: ignore[arg-type]


def one(s: Scenario):
    (case,) = run_scenarios([s]).cases
    return case


def test_a_stub_that_fails_twice_then_succeeds_is_recorded_as_three_attempts_after_ten_minute_backoffs(
        workflow_file: Path) -> None:
    case = one(scenario(workflow_file, stubs={"a": Stub(output=5, fail_attempts=2, error_type="ConnectionError")},
                        expect=Expect(status="succeeded", steps={"a": StepExpect(attempts=3),
                                                                 "b": StepExpect(output=10)})))
    assert case.outcome == PASSED, case.checks
    a = next(s for s in case.steps if s.name == "a")
    assert [a.status for a in a.attempts] == ["failed", "failed", "succeeded"]
    assert a.attempts[0].error_type == "ConnectionError"
    # Two backoffs of 600 s on the virtual clock, and well under a second of wall time.
    assert a.attempts[2].started_at is not None and a.attempts[2].started_at >= 1200
    assert case.virtual_s is not None and case.virtual_s >= 1200
    assert case.wall_s < 1.0


def test_a_wrong_assertion_fails_with_expected_actual_and_a_readable_diff(workflow_file: Path) -> None:
    case = one(scenario(workflow_file, stubs={"a": Stub(output={"rows": [1, 2]}), "b": Stub(output=0)},
                        expect=Expect(status="succeeded", steps={"a": StepExpect(output={"rows": [1, 3]})})))
    assert case.outcome == FAILED
    (bad,) = case.failed_checks
    assert bad.what == "step a output" and bad.expected == {"rows": [1, 3]} and bad.actual == {"rows": [1, 2]}
    assert "-    3" in bad.diff and "+    2" in bad.diff


def test_an_expression_stub_computes_its_output_from_inputs_params_and_attempt(workflow_file: Path) -> None:
    case = one(scenario(workflow_file, stubs={"b": Stub(expr="{'n': inputs.a * 10 + params.x, 'a': attempt}")},
                        expect=Expect(steps={"b": StepExpect(match={"$.n": 44, "$.a": 1})})))
    assert case.outcome == PASSED, case.checks


def test_a_killed_executor_redelivers_the_step_and_one_attempt_is_recorded(workflow_file: Path) -> None:
    case = one(scenario(workflow_file, faults=[Fault("executor_killed", step="a")],
                        expect=Expect(status="succeeded", steps={"a": StepExpect(attempts=1),
                                                                 "b": StepExpect(output=8)})))
    assert case.outcome == PASSED, case.checks
    assert any("redelivered" in note for note in case.faults)


def test_a_step_that_crashes_its_executor_fails_the_run_as_a_poison_step(workflow_file: Path) -> None:
    case = one(scenario(workflow_file, stubs={"b": Stub(crash=True)},
                        expect=Expect(status="failed", steps={"b": StepExpect(error="killed the process")})))
    assert case.outcome == PASSED, case.checks


@pytest.mark.parametrize("fault", ["duplicate_step", "duplicate_result"])
def test_a_duplicated_message_is_fenced_and_recorded_once(workflow_file: Path, fault: str) -> None:
    case = one(scenario(workflow_file, faults=[Fault(fault, step="a")],
                        expect=Expect(status="succeeded", steps={"a": StepExpect(attempts=1)})))
    assert case.outcome == PASSED, case.checks
    assert case.faults == [f"{fault} a attempt 1"]


def test_a_stub_past_its_timeout_times_out_on_the_virtual_clock(workflow_file: Path) -> None:
    case = one(scenario(workflow_file, stubs={"a": Stub(timeout=True)}, expect=Expect(status="failed")))
    assert case.outcome == PASSED, case.checks
    a = next(s for s in case.steps if s.name == "a")
    assert [a.error_type for a in a.attempts] == ["Timeout"] * 4
    assert a.attempts[0].finished_at == pytest.approx(30, abs=0.5)


def test_a_workflow_timeout_fires_on_the_virtual_clock(tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text(WORKFLOW.format(timeout=3600))
    case = one(scenario(path, stubs={"b": Stub(duration_s=7200, output=1)},
                        expect=Expect(status="failed", error="workflow timeout")))
    assert case.outcome == PASSED, case.checks
    assert case.virtual_s is not None and 3600 <= case.virtual_s < 7200


def test_order_and_duration_assertions_use_the_virtual_times(workflow_file: Path) -> None:
    case = one(scenario(workflow_file, stubs={"a": Stub(duration_s=90, output=1)},
                        expect=Expect(order=[("a", "b")], max_duration_s=60,
                                      steps={"a": StepExpect(min_duration_s=90)})))
    assert [c.what for c in case.failed_checks] == ["run duration at most"]
    assert case.failed_checks[0].actual == pytest.approx(90, abs=0.5)


def test_a_case_that_cannot_progress_is_an_error_naming_why(tmp_path: Path) -> None:
    case = one(Scenario(name="no module", workflow=tmp_path / "none.yaml"))
    assert case.outcome == ERROR and "none.yaml" in case.reason


SCENARIO_FILE = """\
scenario: ok
workflow: pair.yaml
steps: [examples.steps]
tags: [fast]
params: {x: 2}
expect:
  status: succeeded
cases:
  - {name: two, params: {x: 2}, expect: {steps: {b: {output: 4}}}}
  - {name: three, params: {x: 3}, expect: {steps: {b: {output: 6}}}}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_scenario_file_with_an_unknown_key_names_its_file_and_line(workflow_file: Path) -> None:
    path = write(workflow_file.parent, "bad.scenario.yaml", SCENARIO_FILE.replace("tags: [fast]", "tagz: [fast]"))
    with pytest.raises(ScenarioError) as caught:
        load_file(path)
    assert caught.value.line == 4 and str(caught.value).startswith(f"{path}:4: unknown key 'tagz'")


@pytest.mark.parametrize("bad,line,words", [
    ("faults:\n  - {name: meteor}\n", 6, "known name"),
    ("stubs:\n  a: {output: 1, expr: 'open(1)'}\n", 6, "only these functions"),
    ("expect:\n  order: [a then b]\n", 6, "a < b"),
    ("faults:\n  - {name: broker_restart}\n", 6, "needs 'step'"),
])
def test_invalid_parts_are_refused_with_their_line(workflow_file: Path, bad: str, line: int, words: str) -> None:
    text = SCENARIO_FILE.split("cases:")[0].replace("expect:\n  status: succeeded\n", "") + bad
    path = write(workflow_file.parent, "bad.scenario.yaml", text)
    with pytest.raises(ScenarioError) as caught:
        load_file(path)
    assert words in str(caught.value) and caught.value.line == line, str(caught.value)


def test_the_command_runs_cases_and_exits_as_pytest_does(workflow_file: Path, tmp_path: Path) -> None:
    good = write(tmp_path, "good.scenario.yaml", SCENARIO_FILE)
    runner = CliRunner()
    result = runner.invoke(cli, ["test", str(good), "--junit", str(tmp_path / "j.xml"), "--json",
                                 str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["totals"]["passed"] == 2 and (tmp_path / "j.xml").read_text().count("<testcase") == 2
    assert "<svg" in (tmp_path / "r.html").read_text()
    failing = write(tmp_path, "bad.scenario.yaml", SCENARIO_FILE.replace("output: 6", "output: 7"))
    assert runner.invoke(cli, ["test", str(failing)]).exit_code == 1
    assert runner.invoke(cli, ["test", str(good), "-k", "three"]).exit_code == 0
    assert runner.invoke(cli, ["test", str(good), "--tag", "slow"]).exit_code == 5
    broken = write(tmp_path, "broken.scenario.yaml", "scenario: [\n")
    invalid = runner.invoke(cli, ["test", str(broken)])
    assert invalid.exit_code == 2 and "broken.scenario.yaml" in invalid.output


def miniflow_test(*args: str) -> subprocess.CompletedProcess[str]:
    """`miniflow test` in a process of its own: -j forks, and a fork of this (threaded) pytest process
    is not what users run."""
    command = [str(Path(sys.executable).parent / "miniflow"), "test", *args]
    return subprocess.run(command, capture_output=True, text=True,
                          timeout=300, cwd=Path.cwd())


def test_fail_fast_and_parallel_runs(workflow_file: Path, tmp_path: Path) -> None:
    failing = write(tmp_path, "f.scenario.yaml", SCENARIO_FILE.replace("output: 4", "output: 5"))
    (s,) = load_file(failing)
    serial = run_scenarios([s], fail_fast=True)
    assert [c.outcome for c in serial.cases] == [FAILED, SKIPPED]
    done = miniflow_test(str(failing), str(write(tmp_path, "g.scenario.yaml", SCENARIO_FILE)), "-j", "2",
                         "--json", str(tmp_path / "r.json"))
    assert done.returncode == 1, done.stdout + done.stderr
    outcomes = [c["outcome"] for c in json.loads((tmp_path / "r.json").read_text())["cases"]]
    assert outcomes == [FAILED, PASSED, PASSED, PASSED]


def test_json_paths_and_expressions_refuse_what_they_cannot_read() -> None:
    assert json_path({"a": [{"b c": 1}]}, "$.a[0]['b c']") == 1
    with pytest.raises(ExpressionError):
        json_path({"a": []}, "$.a[0]")
    for hostile in ("__import__('os')", "().__class__.__mro__", "(lambda: 1)()", "2 ** 999999", "'a' * 10**9"):
        with pytest.raises(ExpressionError):
            evaluate(hostile, {})
    assert evaluate("x.y if x.y > 1 else 0", {"x": {"y": 3}}) == 3


def test_the_shipped_example_suite_passes_embedded() -> None:
    done = miniflow_test("examples/scenarios", "-j", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 passed" in done.stdout


def test_the_pytest_plugin_collects_scenario_files_and_offers_fixtures(workflow_file: Path, tmp_path: Path) -> None:
    write(tmp_path, "good.scenario.yaml", SCENARIO_FILE)
    write(tmp_path, "bad.scenario.yaml", SCENARIO_FILE.replace("output: 6", "output: 7"))
    write(tmp_path, "test_own.py", f"""
        from pathlib import Path
        from miniflow.ops.testengine import Scenario, Stub, Expect

        def test_fixture(miniflow_scenarios, miniflow_engine):
            suite = miniflow_scenarios([Scenario(name="py", workflow=Path({str(workflow_file)!r}),
                                                 steps_modules=["examples.steps"], stubs={{"b": Stub(output=1)}},
                                                 expect=Expect(status="succeeded"))])
            assert suite.exit_code == 0, suite.cases
            assert miniflow_engine.run("nope") is None
        """)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=Path.cwd())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 4 passed" in done.stdout, done.stdout
    assert "step b output" in done.stdout and "expected: 7" in done.stdout
