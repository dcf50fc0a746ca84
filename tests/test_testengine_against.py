"""The parts of `miniflow test --against` that need no service: the workflow copy a case deploys,
which cases a target skips and why, the scenario task executors run, and the command's usage
errors. The runs themselves are in tests/integration/test_testengine_against.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from miniflow.actors.registry import StepContext
from miniflow.coordinator import load_file
from miniflow.ops.cli import cli
from miniflow.ops.testengine import Fault, Scenario, Stub
from miniflow.ops.testengine.against import CONFIG_KEY, TASK, Target, deployed_copy, skip_reason, spec_for
from miniflow.protocol.errors import StepFailed

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT / "tests" / "data" / "scenarios" / "pair.yaml"


def target(managed: bool = True) -> Target:
    return Target({"MINIFLOW_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}, "sqlite://",
                  "against" if managed else "cluster", managed=managed)


def test_the_copy_runs_stubbed_and_killed_steps_through_the_scenario_task_under_a_name_of_its_own() -> None:
    workflow = load_file(PAIR)
    scenario = Scenario(name="s", workflow=PAIR, stubs={"b": Stub(expr="inputs.a * 2", duration_s=0.5)},
                        faults=[Fault("executor_killed", step="a", attempt=2)])
    copy = deployed_copy(scenario, workflow)
    assert copy.name.startswith("pair.scenario-") and copy.name == deployed_copy(scenario, workflow).name
    a, b = copy.steps["a"], copy.steps["b"]
    assert (a.task, b.task) == (TASK, TASK)
    assert a.config[CONFIG_KEY] == {"real": "diamond.source", "killed": [2], "timeout_s": 1.0, "stub": None}
    assert b.config[CONFIG_KEY]["stub"]["expr"] == "inputs.a * 2" and b.config[CONFIG_KEY]["real"] is None
    assert (a.retries, a.timeout, a.backoff) == (workflow.steps["a"].retries, 1.0, workflow.steps["a"].backoff)
    plain = deployed_copy(Scenario(name="t", workflow=PAIR), workflow)
    assert plain.steps == workflow.steps and plain.name != copy.name


@pytest.mark.parametrize("fields,managed,words", [
    ({"schedule": {"cron": "0 * * * *"}}, True, "virtual clock"),
    ({"faults": [Fault("clock_moved", at_s=1, by_s=1)]}, True, "virtual clock"),
    ({"stubs": {"a": Stub(fn=lambda ctx: 1)}}, True, "Python stub"),
    ({"faults": [Fault("duplicate_result", step="a")]}, True, "embedded broker"),
    ({"faults": [Fault("broker_restart", step="a")]}, True, "--private-services"),
    ({"faults": [Fault("executor_killed", step="a")]}, False, "process control"),
    ({"stubs": {"a": Stub(crash=True)}}, False, "process control"),
])
def test_a_target_skips_what_it_cannot_do_and_says_why(fields: dict[str, Any], managed: bool, words: str) -> None:
    reason = skip_reason(Scenario(name="s", workflow=PAIR, **fields), target(managed))
    assert reason is not None and words in reason


def test_a_target_runs_stubs_and_process_faults_it_controls() -> None:
    scenario = Scenario(name="s", workflow=PAIR, stubs={"a": Stub(crash=True), "b": Stub(fail_attempts=1)},
                        faults=[Fault("executor_killed", step="b")])
    assert skip_reason(scenario, target(True)) is None


def context(config: dict[str, Any], attempt: int = 1) -> StepContext:
    return StepContext(run_id="r", workflow="w", step="b", attempt=attempt, params={"x": 4}, config=config,
                       inputs={"a": 4})


def test_the_scenario_task_plays_its_stub_or_calls_the_real_task_without_the_scenario_config() -> None:
    import examples.steps  # noqa: F401 - registers diamond.double
    from miniflow.ops.testengine.remote import scenario_task

    stub = spec_for(Stub(expr="{'n': inputs.a + params.x, 'attempt': attempt}", fail_attempts=1,
                         error_type="Flaky"), None, set(), None)
    with pytest.raises(StepFailed) as failed:
        scenario_task(context({CONFIG_KEY: stub}, attempt=1))
    assert failed.value.error_type == "Flaky"
    assert scenario_task(context({CONFIG_KEY: stub}, attempt=2)) == {"n": 8, "attempt": 2}
    real = spec_for(None, "diamond.double", set(), None)
    assert scenario_task(context({CONFIG_KEY: real, "other": 1})) == 8
    with pytest.raises(StepFailed, match="__scenario__"):
        scenario_task(context({}))


def test_only_executors_started_with_the_remote_module_have_the_scenario_task() -> None:
    code = ("import miniflow.ops.cli, miniflow.ops.testengine.against, miniflow.ops.testengine.workers\n"
            "from miniflow.actors.registry import registry\nprint('miniflow.scenario' in registry)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert found.stdout.strip() == "False"


@pytest.mark.parametrize("args,env,words", [
    (["--cluster"], {}, "go with --against"),
    (["--against", "--cluster", "--private-services"], {}, "does not go with --cluster"),
    (["--against"], {"MINIFLOW_BROKER_URL": ""}, "needs MINIFLOW_BROKER_URL"),
    (["--against"], {"MINIFLOW_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F", "MINIFLOW_DATABASE_URL": "sqlite:///x.db"},
     "of a Postgres server"),
])
def test_the_command_refuses_a_target_it_cannot_use_with_exit_code_2(args: list[str], env: dict[str, str],
                                                                    words: str) -> None:
    result = CliRunner().invoke(cli, ["test", str(ROOT / "examples" / "scenarios" / "diamond.scenario.yaml"), *args],
                                env=env)
    assert result.exit_code == 2, result.output
    assert words in result.output
