"""coordinator/definitions.py: YAML and dict definitions -> validated workflows, and every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from miniflow.coordinator import Backoff, ParamSpec, StepSpec, Workflow, find_cycle, load_file, loads, parse
from miniflow.protocol.errors import CoordinatorError, DefinitionError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

FULL = """\
name: etl.daily
description: A daily load.
timeout: 3600
params:
  day: {required: true, description: The day to load.}
  token: {secret: true, required: true}
  limit: {default: 100}
  mode: fast
steps:
  - name: extract
    task: etl.extract
    retries: 3
    backoff: {initial: 0.5, max: 10, multiplier: 3, jitter: 0.2}
    timeout: 120
    queue: io-bound
    config: {table: orders, columns: [id, total]}
  - name: transform
    task: etl.transform
    needs: extract
  - name: load
    task: etl.load
    needs: [extract, transform]
    backoff: 2
"""


def error(text: str) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        loads(text, source="wf.yaml")
    err = info.value
    assert err.source == "wf.yaml"
    assert str(err).startswith("wf.yaml: ")
    return err


def workflow_text(*steps: str, head: str = "name: w\n") -> str:
    return head + "steps:\n" + "".join(f"  - {s}\n" for s in steps)


def step_error(step_yaml: str) -> DefinitionError:
    """The error for a workflow with one step ``a`` given as a YAML flow mapping."""
    err = error(workflow_text(step_yaml))
    assert err.step == "a"
    assert "step 'a'" in str(err)
    return err


# -- valid definitions ---------------------------------------------------------------------------
def test_a_valid_yaml_file_becomes_a_workflow_with_every_field() -> None:
    wf = loads(FULL, source="wf.yaml")
    assert isinstance(wf, Workflow)
    assert wf.name == "etl.daily"
    assert wf.description == "A daily load."
    assert wf.timeout == 3600.0
    assert list(wf.steps) == ["extract", "transform", "load"]
    extract = wf.steps["extract"]
    assert extract == StepSpec(name="extract", task="etl.extract", needs=(),
                               config={"table": "orders", "columns": ["id", "total"]}, queue="io-bound",
                               retries=3, backoff=Backoff(initial=0.5, max=10.0, multiplier=3.0, jitter=0.2),
                               timeout=120.0)
    assert extract.max_attempts == 4
    assert wf.steps["transform"].needs == ("extract",)
    assert wf.steps["transform"].backoff == Backoff()
    assert wf.steps["transform"].retries == 0
    assert wf.steps["transform"].queue is None
    assert wf.steps["load"].needs == ("extract", "transform")
    assert wf.steps["load"].backoff == Backoff(initial=2.0)


def test_params_carry_their_default_required_and_secret_flags() -> None:
    wf = loads(FULL, source="wf.yaml")
    assert wf.params == {
        "day": ParamSpec("day", None, required=True, secret=False, description="The day to load."),
        "token": ParamSpec("token", None, required=True, secret=True),
        "limit": ParamSpec("limit", 100),
        "mode": ParamSpec("mode", "fast"),
    }
    assert wf.secret_params() == {"token"}


def test_a_workflow_knows_its_roots_and_dependents() -> None:
    wf = loads(FULL, source="wf.yaml")
    assert wf.roots() == ["extract"]
    assert wf.dependents("extract") == ["transform", "load"]
    assert wf.dependents("load") == []


def test_steps_before_the_same_joins_share_one_list_of_the_joins_needs() -> None:
    wide = "name: wide\nsteps:\n" + "".join(f"  - {{name: p{i}, task: t}}\n" for i in range(998)) + \
        "  - {name: join, task: t, needs: [" + ", ".join(f"p{i}" for i in range(998)) + "]}\n" + \
        "  - {name: two, task: t, needs: [p0, p1]}\n"
    wf = loads(wide)
    joins = wf.needs_of_joins
    assert joins["p5"] == tuple(sorted(f"p{i}" for i in range(998)))
    assert joins["p5"] is joins["p997"]  # one tuple for the 996 steps before the join alone
    assert joins["p0"] == joins["p5"]  # p0 and p1 come before both joins: their needs together
    assert joins["p0"] is joins["p1"] and joins["p0"] is not joins["p5"]
    assert "join" not in joins  # nothing needs it


def test_parse_accepts_a_definition_built_in_python() -> None:
    wf = parse({"name": "py", "steps": [{"name": "a", "task": "t.a"}, {"name": "b", "task": "t.b",
                                                                        "needs": ["a"]}]})
    assert wf.steps["b"].needs == ("a",)
    assert wf.params == {}
    assert wf.version is None


@pytest.mark.parametrize("name", ["csv_report.yaml", "diamond.yaml"])
def test_the_example_workflows_load(name: str) -> None:
    wf = load_file(EXAMPLES / name)
    assert wf.steps


def test_the_diamond_example_has_its_shape() -> None:
    wf = load_file(EXAMPLES / "diamond.yaml")
    assert wf.name == "diamond"
    needs = {s.name: s.needs for s in wf.steps.values()}
    assert needs == {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    assert wf.params["x"].default == 3


def test_the_csv_report_example_fans_out_and_joins() -> None:
    wf = load_file(EXAMPLES / "csv_report.yaml")
    assert wf.name == "csv-report"
    assert wf.steps["load"].retries == 2
    assert wf.steps["load"].backoff == Backoff(initial=0.5, max=5.0)
    assert wf.steps["report"].needs == ("by_region", "by_product", "by_month")
    assert wf.dependents("load") == ["by_region", "by_product", "by_month"]


# -- to_spec / from_spec -------------------------------------------------------------------------
def test_a_workflow_survives_a_to_spec_from_spec_round_trip() -> None:
    wf = loads(FULL, source="wf.yaml")
    again = Workflow.from_spec(wf.to_spec(), version=4)
    assert again.steps == wf.steps
    assert again.params == wf.params
    assert (again.name, again.description, again.timeout) == (wf.name, wf.description, wf.timeout)
    assert again.version == 4
    assert list(again.steps) == list(wf.steps)


@pytest.mark.parametrize("name", ["csv_report.yaml", "diamond.yaml"])
def test_the_examples_survive_a_spec_round_trip(name: str) -> None:
    wf = load_file(EXAMPLES / name)
    assert Workflow.from_spec(wf.to_spec()).steps == wf.steps


def test_a_spec_is_plain_json_data() -> None:
    import json

    spec = loads(FULL, source="wf.yaml").to_spec()
    assert json.loads(json.dumps(spec)) == spec


def test_a_broken_stored_spec_names_the_stored_workflow() -> None:
    spec = loads(FULL, source="wf.yaml").to_spec()
    spec["steps"][1]["needs"] = ["nope"]
    with pytest.raises(DefinitionError) as info:
        Workflow.from_spec(spec)
    assert info.value.source == "stored workflow 'etl.daily'"
    assert info.value.step == "transform"


# -- files ---------------------------------------------------------------------------------------
def test_a_missing_file_is_a_definition_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(DefinitionError) as info:
        load_file(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_a_file_that_is_not_utf8_is_a_definition_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\nsteps: []\n")
    with pytest.raises(DefinitionError, match="not UTF-8") as info:
        load_file(path)
    assert info.value.source == str(path)


def test_load_file_names_the_file_in_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(workflow_text("{name: join, task: t, needs: [lod]}", "{name: load, task: t}"))
    with pytest.raises(DefinitionError) as info:
        load_file(path)
    assert str(info.value) == f"{path}: step 'join': needs unknown step 'lod' (known: join, load)"


# -- errors: the graph ---------------------------------------------------------------------------
def test_a_cycle_is_reported_with_its_path() -> None:
    err = error(workflow_text("{name: a, task: t, needs: [b]}", "{name: b, task: t, needs: [c]}",
                              "{name: c, task: t, needs: [a]}", "{name: d, task: t}"))
    assert "a -> b -> c -> a" in str(err)
    assert "cycle" in err.problem
    assert err.step == "a"


def test_a_cycle_below_an_acyclic_root_is_reported_with_only_the_cycle() -> None:
    err = error(workflow_text("{name: root, task: t, needs: [x]}", "{name: x, task: t, needs: [y]}",
                              "{name: y, task: t, needs: [x]}"))
    assert "x -> y -> x" in str(err)
    assert "root ->" not in str(err)
    assert err.step == "x"


def test_find_cycle_returns_none_for_a_dag() -> None:
    wf = loads(FULL, source="wf.yaml")
    assert find_cycle(wf.steps) is None


def test_find_cycle_handles_a_long_chain_without_recursion() -> None:
    steps = {f"s{i}": StepSpec(f"s{i}", "t", needs=(f"s{i + 1}",) if i < 4999 else ()) for i in range(5000)}
    assert find_cycle(steps) is None
    steps["s4999"] = StepSpec("s4999", "t", needs=("s0",))
    cycle = find_cycle(steps)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 5001


def test_a_step_that_needs_itself_is_reported() -> None:
    err = step_error("{name: a, task: t, needs: [a]}")
    assert "needs itself" in err.problem


def test_a_dangling_need_names_the_unknown_step() -> None:
    err = error(workflow_text("{name: a, task: t, needs: [ghost]}", "{name: b, task: t}"))
    assert err.step == "a"
    assert "needs unknown step 'ghost'" in str(err)


def test_a_need_listed_twice_is_reported() -> None:
    err = error(workflow_text("{name: a, task: t}", "{name: b, task: t, needs: [a, a]}"))
    assert err.step == "b"
    assert "twice" in err.problem


def test_duplicate_step_names_are_reported() -> None:
    err = error(workflow_text("{name: a, task: t}", "{name: a, task: u}"))
    assert err.step == "a"
    assert "duplicate step name" in str(err)


# -- errors: YAML --------------------------------------------------------------------------------
def test_a_duplicate_yaml_key_is_reported_with_its_line() -> None:
    err = error("name: w\nsteps:\n  - name: a\n    task: t\n    task: u\n")
    assert "duplicate key 'task'" in str(err)
    assert "line 5" in str(err)


def test_a_duplicate_top_level_key_is_reported() -> None:
    err = error("name: w\nname: v\nsteps: [{name: a, task: t}]\n")
    assert "duplicate key 'name'" in str(err)
    assert "line 2" in str(err)


def test_invalid_yaml_is_reported_with_its_line_number() -> None:
    err = error("name: w\nsteps:\n  - {name: a, task: t\n  - {name: b}\n\n")
    assert "not valid YAML" in str(err)
    assert "(line " in str(err)


def test_a_tab_indented_file_is_reported_with_its_line_number() -> None:
    err = error("name: w\nsteps:\n\t- {name: a, task: t}\n")
    assert "not valid YAML (line 3" in str(err)


def test_yaml_tags_for_python_objects_are_refused() -> None:
    err = error("name: !!python/object/apply:os.system ['true']\nsteps: [{name: a, task: t}]\n")
    assert "not valid YAML" in str(err)


def test_an_unhashable_yaml_key_is_a_definition_error() -> None:
    err = error("name: w\n? [a, b]\n: 1\nsteps: [{name: a, task: t}]\n")
    assert "line 2" in str(err)


@pytest.mark.parametrize("where", ["workflow", "step", "task", "queue", "param"])
def test_a_name_with_a_trailing_newline_is_reported(where: str) -> None:
    step: dict[str, object] = {"name": "a", "task": "t"}
    data: dict[str, object] = {"name": "w", "steps": [step]}
    if where == "workflow":
        data["name"] = "w\n"
    elif where == "step":
        step["name"] = "a\n"
    elif where == "param":
        data["params"] = {"p\n": 1}
    else:
        step[where] = "x\n"
    with pytest.raises(DefinitionError):
        parse(data, source="wf.yaml")


# -- errors: the top level -----------------------------------------------------------------------
@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "", "42\n"],
                         ids=["list", "scalar", "empty", "number"])
def test_a_top_level_that_is_not_a_mapping_is_reported(text: str) -> None:
    err = error(text)
    assert "must be a mapping" in err.problem
    assert err.step is None


def test_an_empty_steps_list_is_reported() -> None:
    for text in ("name: w\nsteps: []\n", "name: w\n", "name: w\nsteps: {a: 1}\n"):
        assert "'steps' must be a non-empty list" in error(text).problem


def test_more_than_1000_steps_are_reported() -> None:
    steps = [{"name": f"s{i}", "task": "t"} for i in range(1001)]
    with pytest.raises(DefinitionError, match="1001 steps is more than the limit of 1000"):
        parse({"name": "w", "steps": steps}, source="wf.yaml")


def test_exactly_1000_steps_are_accepted() -> None:
    steps = [{"name": f"s{i}", "task": "t", "needs": [f"s{i - 1}"] if i else []} for i in range(1000)]
    assert len(parse({"name": "w", "steps": steps}).steps) == 1000


def test_an_unknown_workflow_key_is_reported() -> None:
    err = error("name: w\nstpes: []\nsteps: [{name: a, task: t}]\n")
    assert "unknown workflow key(s) stpes" in err.problem


@pytest.mark.parametrize("name", ["", "-x", "has space", "x" * 129, "[1]"])
def test_a_bad_workflow_name_is_reported(name: str) -> None:
    with pytest.raises(DefinitionError, match="'name' must be"):
        parse({"name": name, "steps": [{"name": "a", "task": "t"}]}, source="wf.yaml")


def test_a_bad_workflow_timeout_is_reported() -> None:
    err = error("name: w\ntimeout: 0\nsteps: [{name: a, task: t}]\n")
    assert "'timeout' must be >=" in err.problem


# -- errors: a step ------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["'9lives'", "'has space'", "'a/b'", "42", "null", "[x]"])
def test_a_bad_task_reference_is_reported(task: str) -> None:
    err = step_error(f"{{name: a, task: {task}}}")
    assert "'task' must name a registered step" in err.problem


def test_a_step_without_a_task_is_reported() -> None:
    assert "'task'" in step_error("{name: a}").problem


def test_an_unknown_step_key_is_reported_with_the_allowed_keys() -> None:
    err = step_error("{name: a, task: t, retry: 3, after: b}")
    assert "unknown step key(s) after, retry" in err.problem
    assert "allowed:" in err.problem


def test_a_step_without_a_name_is_reported_by_its_index() -> None:
    err = error(workflow_text("{name: a, task: t}", "{task: t}"))
    assert "steps[1]" in err.problem


def test_a_step_that_is_not_a_mapping_is_reported_by_its_index() -> None:
    err = error(workflow_text("{name: a, task: t}", "just-a-string"))
    assert "steps[1] must be a mapping" in err.problem


@pytest.mark.parametrize("retries", ["-1", "true", "101", "1.5", "'2'"])
def test_bad_retries_are_reported(retries: str) -> None:
    err = step_error(f"{{name: a, task: t, retries: {retries}}}")
    assert "'retries' must be a whole number from 0 to 100" in err.problem


@pytest.mark.parametrize("retries", [0, 100])
def test_retries_from_0_to_100_are_accepted(retries: int) -> None:
    wf = loads(workflow_text(f"{{name: a, task: t, retries: {retries}}}"), source="wf.yaml")
    assert wf.steps["a"].max_attempts == retries + 1


@pytest.mark.parametrize("backoff, problem", [
    ("{jitter: 1.5}", "backoff 'jitter' must be a fraction from 0 to 1"),
    ("{initial: 10, max: 5}", "backoff 'max' must be >= 'initial'"),
    ("{multiplier: 0.5}", "backoff 'multiplier' must be >= 1"),
    ("{initial: -1}", "backoff 'initial' must be >= 0"),
    ("{initial: .nan}", "backoff 'initial' must be a number"),
    ("{max: .inf}", "backoff 'max' must be a number"),
    ("{jitter: true}", "backoff 'jitter' must be a number"),
    ("{start: 1}", "unknown backoff key(s) start"),
    ("[1, 2]", "'backoff' must be seconds or a mapping"),
    ("fast", "'backoff' must be seconds or a mapping"),
])
def test_a_bad_backoff_is_reported(backoff: str, problem: str) -> None:
    assert problem in step_error(f"{{name: a, task: t, backoff: {backoff}}}").problem


def test_a_backoff_with_jitter_1_and_max_equal_to_initial_is_accepted() -> None:
    text = workflow_text("{name: a, task: t, backoff: {initial: 5, max: 5, jitter: 1}}")
    wf = loads(text, source="wf.yaml")
    assert wf.steps["a"].backoff == Backoff(initial=5.0, max=5.0, jitter=1.0)


@pytest.mark.parametrize("field, value, problem", [
    ("timeout", "0", "'timeout' must be >= 0.001"),
    ("timeout", "soon", "'timeout' must be a number"),
    ("queue", "'has.dot'", "'queue' must be"),
    ("config", "[1, 2]", "'config' must be a mapping"),
    ("needs", "{b: 1}", "'needs' must be a step name or a list"),
    ("needs", "[1]", "'needs' must be a step name or a list"),
])
def test_other_bad_step_fields_are_reported(field: str, value: str, problem: str) -> None:
    assert problem in step_error(f"{{name: a, task: t, {field}: {value}}}").problem


# -- errors: params ------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", ["{required: 'yes'}", "{secret: 1}", "{required: null}"])
def test_param_flags_that_are_not_booleans_are_reported(flags: str) -> None:
    err = error(f"name: w\nparams:\n  p: {flags}\nsteps: [{{name: a, task: t}}]\n")
    assert "param 'p': 'required' and 'secret' must be true or false" in err.problem


def test_an_unknown_param_key_is_reported() -> None:
    err = error("name: w\nparams:\n  p: {default: 1, hidden: true}\nsteps: [{name: a, task: t}]\n")
    assert "unknown param 'p' key(s) hidden" in err.problem


def test_a_bad_param_name_is_reported() -> None:
    err = error("name: w\nparams:\n  'bad name': 1\nsteps: [{name: a, task: t}]\n")
    assert "param name 'bad name' is not a valid name" in err.problem


def test_params_that_are_not_a_mapping_are_reported() -> None:
    err = error("name: w\nparams: [a, b]\nsteps: [{name: a, task: t}]\n")
    assert "'params' must be a mapping" in err.problem


# -- the error type ------------------------------------------------------------------------------
def test_a_definition_error_is_a_coordinator_error_with_source_step_and_problem() -> None:
    err = error(workflow_text("{name: a, task: t, needs: [a]}"))
    assert isinstance(err, CoordinatorError)
    assert (err.source, err.step, err.problem) == ("wf.yaml", "a", "needs itself")
    assert str(err) == "wf.yaml: step 'a': needs itself"


def test_loads_without_a_source_still_names_one() -> None:
    with pytest.raises(DefinitionError) as info:
        loads("[]")
    assert info.value.source == "<string>"



def test_every_problem_of_a_definition_is_reported_not_only_the_first() -> None:
    with pytest.raises(DefinitionError) as info:
        parse({"name": "bad name!", "timeout": -1, "steps": [
            {"name": "a", "task": "t.a", "queue": "no spaces allowed", "retries": 500},
            {"name": "b", "task": "t.b", "needs": ["a", "ghost"], "colour": "red"},
        ]}, "many.yaml")
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 5, problems
    for expected in ("'name' must be", "'timeout' must be >=", "step 'a': 'queue'", "step 'a': 'retries'",
                     "step 'b': unknown step key(s) colour"):
        assert any(expected in p for p in problems), (expected, problems)
    assert str(info.value).count("\n") == 4  # one line per problem
