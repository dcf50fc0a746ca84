"""A wide run on real RabbitMQ and Postgres, across a coordinator and two executors: its results race
on the counters of its join and of the run (persistence/repository/counters.py, one statement on
Postgres), and the run still ends exactly once with every output, each step recorded once."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import miniflow, query

WIDTH = 300


def test_a_run_of_300_parallel_steps_and_a_join_ends_with_every_output_each_step_recorded_once(
        cluster: dict[str, str], tmp_path: Path) -> None:
    lines = ["name: wide-sum", "params: {x: {default: 1}}", "steps:", "  - {name: a, task: diamond.source}"]
    lines += [f"  - {{name: w{i}, task: diamond.double, needs: [a]}}" for i in range(WIDTH)]
    lines.append(f"  - {{name: join, task: diamond.sum, needs: [{', '.join(f'w{i}' for i in range(WIDTH))}]}}")
    path = tmp_path / "wide.yaml"
    path.write_text("\n".join(lines) + "\n")
    deployed = miniflow(cluster, "deploy", str(path))
    assert deployed.returncode == 0, deployed.stderr
    result = miniflow(cluster, "start", "wide-sum", "-p", "x=7", "--wait", "--timeout", "180", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["status"] == "succeeded"
    outputs = {s["step"]: s["output"] for s in detail["steps"]}
    assert outputs["join"] == WIDTH * 14 and all(outputs[f"w{i}"] == 14 for i in range(WIDTH))
    db = cluster["MINIFLOW_DATABASE_URL"]
    assert query(db, "select count(*), count(distinct step) from step_attempts where run_id = %s",
                 detail["id"]) == [(WIDTH + 2, WIDTH + 2)]
    assert query(db, "select open_ends from runs where id = %s", detail["id"]) == [(0,)]
    assert query(db, "select waiting from run_steps where run_id = %s and step = 'join'", detail["id"]) == [(0,)]


def test_false_conditions_cut_branches_and_the_run_succeeds_across_processes(cluster: dict[str, str],
                                                                             tmp_path: Path) -> None:
    """On Postgres the skips go through the counters' statement: a join with a skipped need is
    skipped once its other needs have run; a branch with a true condition runs."""
    (tmp_path / "cond.yaml").write_text(
        "name: cond-branches\nparams: {x: {default: 3}}\nsteps:\n"
        "  - {name: a, task: diamond.source}\n"
        "  - {name: big, task: diamond.double, needs: [a], when: \"inputs.a > 10\"}\n"
        "  - {name: small, task: diamond.square, needs: [a], when: \"inputs.a <= 10\"}\n"
        "  - {name: other, task: diamond.double, needs: [a]}\n"
        "  - {name: join, task: diamond.sum, needs: [big, small, other]}\n"
        "  - {name: after_small, task: diamond.sum, needs: [small, other]}\n")
    assert miniflow(cluster, "deploy", str(tmp_path / "cond.yaml")).returncode == 0
    result = miniflow(cluster, "start", "cond-branches", "-p", "x=3", "--wait", "--timeout", "60", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    steps = {s["step"]: s for s in detail["steps"]}
    assert detail["status"] == "succeeded"
    assert {name: s["status"] for name, s in steps.items()} == {
        "a": "succeeded", "big": "skipped", "small": "succeeded", "other": "succeeded", "join": "skipped",
        "after_small": "succeeded"}
    assert steps["after_small"]["output"] == 9 + 6
    assert query(cluster["MINIFLOW_DATABASE_URL"], "select note from run_steps where run_id = %s and step = 'join'",
                 detail["id"]) == [("skipped: it needs 'big', which was skipped",)]


def test_trigger_rules_run_the_cleanup_of_a_wide_run_after_a_failure_across_processes(
        cluster: dict[str, str], tmp_path: Path) -> None:
    """A failure in a workflow with trigger rules goes through the counters on Postgres: the join
    that asks for successes is upstream_failed, the all_done join of 41 needs (more than are read
    in the counters' statement) and the any_failed step run, and the run fails once they have."""
    width = 40
    wide = ", ".join(f"w{i}" for i in range(width))
    lines = ["name: cleanup-wide", "params: {x: {default: 2}}", "steps:", "  - {name: a, task: diamond.source}"]
    lines += [f"  - {{name: w{i}, task: diamond.double, needs: [a]}}" for i in range(width)]
    lines += ["  - {name: bad, task: diamond.double, needs: [w0]}",  # its inputs have no 'a': it fails
              f"  - {{name: join, task: diamond.sum, needs: [{wide}, bad]}}",
              f"  - {{name: tally, task: demo.sleep, config: {{seconds: 0}}, needs: [{wide}, bad], trigger: all_done}}",
              "  - {name: notify, task: demo.sleep, config: {seconds: 0}, needs: [bad], trigger: any_failed}",
              "  - {name: quiet, task: demo.sleep, config: {seconds: 0}, needs: [w1], trigger: any_failed}"]
    (tmp_path / "cleanup.yaml").write_text("\n".join(lines) + "\n")
    assert miniflow(cluster, "deploy", str(tmp_path / "cleanup.yaml")).returncode == 0
    result = miniflow(cluster, "start", "cleanup-wide", "--wait", "--timeout", "120", "--json")
    assert result.returncode == 1, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["status"] == "failed" and (detail["error"] or "").startswith("step 'bad' failed after 1 attempt")
    status = {s["step"]: s["status"] for s in detail["steps"]}
    assert {name: status[name] for name in ("bad", "join", "tally", "notify", "quiet")} == {
        "bad": "failed", "join": "upstream_failed", "tally": "succeeded", "notify": "succeeded", "quiet": "skipped"}
    assert all(status[f"w{i}"] == "succeeded" for i in range(width))
    db = cluster["MINIFLOW_DATABASE_URL"]
    assert query(db, "select count(*), count(distinct step) from step_attempts where run_id = %s",
                 detail["id"]) == [(width + 4, width + 4)]
    assert query(db, "select open_ends from runs where id = %s", detail["id"]) == [(0,)]
