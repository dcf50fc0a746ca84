"""`miniflow test --against`: the shipped scenarios and the engine's fault scenarios on real RabbitMQ
and Postgres, on workers the engine starts (and removes), on private services it restarts, and on a
deployed cluster where faults that need process control are skipped."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pika
import pytest

from .conftest import ADMIN_DB_URL, BIN, BROKER_URL, ROOT, _base_env, poll, query

DATA = ROOT / "tests" / "data" / "scenarios"


def miniflow_test(env: dict[str, str], *args: str, timeout: float = 400) -> tuple[int, dict[str, Any], str]:
    """`miniflow test ARGS --json FILE`: exit code, the JSON report and stderr."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.json"
        done = subprocess.run([str(BIN / "miniflow"), "test", *args, "--json", str(path)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert path.exists(), f"no JSON report (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.returncode, json.loads(path.read_text()), done.stderr


def configured(services: None) -> dict[str, str]:
    return dict(_base_env(), MINIFLOW_BROKER_URL=BROKER_URL, MINIFLOW_DATABASE_URL=ADMIN_DB_URL)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"].split("::", 1)[1]: c for c in report["cases"]}


def assert_left_nothing(stderr: str) -> None:
    """The namespace's queues and database are gone once the command has ended."""
    found = re.search(r"workers ready in namespace (\w+)", stderr)
    assert found, stderr[-2000:]
    namespace = found.group(1)
    assert not query(ADMIN_DB_URL, "select datname from pg_database where datname = %s",
                     namespace.replace("mfscn_", "miniflow_scenarios_"))
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            connection.channel().queue_declare(f"{namespace}.ingress", passive=True)
    finally:
        if connection.is_open:
            connection.close()


def test_the_shipped_scenarios_pass_on_real_workers_two_at_a_time_and_the_virtual_clock_ones_are_skipped(
        services: None) -> None:
    code, report, stderr = miniflow_test(configured(services), "examples/scenarios", "--against", "-j", "2")
    cases = report["cases"]
    assert code == 0, json.dumps(cases, indent=1)[-4000:]
    assert [c["mode"] for c in cases] == ["against"] * 10
    passed = {c["id"].split("::")[1] for c in cases if c["outcome"] == "passed"}
    assert len(passed) == 6 and "a run cancelled while a step runs for an hour" in passed
    skipped = [c for c in cases if c["outcome"] == "skipped"]
    assert len(skipped) == 4 and all("virtual clock" in c["reason"] for c in skipped)
    assert all(c["source"].endswith("nightly.scenario.yaml") for c in skipped)
    assert_left_nothing(stderr)


def test_stubs_and_executor_faults_run_on_real_executors(services: None) -> None:
    code, report, stderr = miniflow_test(configured(services), str(DATA / "faults.scenario.yaml"), "--against")
    cases = by_name(report)
    assert code == 1  # the one wrong expectation
    outcomes = {name: c["outcome"] for name, c in cases.items()}
    assert outcomes == {"fails twice then succeeds": "passed", "the executor dies after a's body": "passed",
                        "a poison step": "passed", "a stub past its timeout": "passed",
                        "an expression stub": "passed", "a wrong expectation": "failed",
                        "a duplicated step message": "skipped"}, json.dumps(report, indent=1)[-4000:]
    flaky = next(s for s in cases["fails twice then succeeds"]["steps"] if s["name"] == "a")
    assert [(a["status"], a["error_type"]) for a in flaky["attempts"]] == [
        ("failed", "ConnectionError"), ("failed", "ConnectionError"), ("succeeded", None)]
    assert cases["the executor dies after a's body"]["faults"] == ["executor exited (killed): restarted"]
    timed_out = next(s for s in cases["a stub past its timeout"]["steps"] if s["name"] == "a")
    assert {a["error_type"] for a in timed_out["attempts"]} == {"Timeout"}
    (wrong,) = [c for c in cases["a wrong expectation"]["checks"] if not c["ok"]]
    assert (wrong["what"], wrong["expected"], wrong["actual"]) == ("step b output", 9, 8)
    assert "embedded broker" in cases["a duplicated step message"]["reason"]
    assert_left_nothing(stderr)


def test_rabbitmq_and_postgres_restarts_mid_step_on_private_services(services: None) -> None:
    code, report, stderr = miniflow_test(configured(services), str(DATA / "restarts.scenario.yaml"), "--against",
                                         "--private-services")
    cases = by_name(report)
    assert code == 0, json.dumps(report, indent=1)[-4000:]
    assert "on private services" in stderr
    broker = cases["RabbitMQ restarts while a step runs"]["faults"]
    database = cases["Postgres is down for 2 s while a step runs"]["faults"]
    assert len(broker) == 1 and broker[0].startswith("broker_restart while step b attempt 1 runs: done")
    assert len(database) == 1 and database[0].startswith("database_restart while step b attempt 1 runs: done")
    for case in cases.values():  # one attempt each: nothing lost, nothing recorded twice
        assert [len(s["attempts"]) for s in case["steps"]] == [1, 1]


def test_without_private_services_a_restart_is_skipped_and_embedded_too(services: None) -> None:
    code, report, _ = miniflow_test(configured(services), str(DATA / "restarts.scenario.yaml"))
    assert code == 0 and {c["outcome"] for c in report["cases"]} == {"skipped"}
    assert all("--private-services" in c["reason"] for c in report["cases"])


def test_on_a_deployed_cluster_process_faults_are_skipped_and_a_missing_stub_task_is_named(
        cluster: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cluster.scenario.yaml").write_text(textwrap.dedent(f"""\
        workflow: {ROOT / 'examples' / 'diamond.yaml'}
        params: {{x: 3}}
        scenarios:
          - scenario: the real steps
            expect: {{status: succeeded, steps: {{d: {{output: 15}}}}}}
          - scenario: the deployed workflow by name
            workflow: diamond
            expect: {{status: succeeded, steps: {{d: {{output: 15}}}}}}
          - scenario: an executor killed
            faults: [{{name: executor_killed, step: b}}]
          - scenario: a stub the cluster's executors cannot run
            stubs: {{b: {{output: 1}}}}
            timeout: 8s
        """))
    code, report, _ = miniflow_test(cluster, str(tmp_path), "--against", "--cluster")
    cases = by_name(report)
    assert code == 1, json.dumps(report["cases"], indent=1)[-5000:]
    assert [c["mode"] for c in report["cases"]] == ["cluster"] * 4
    assert cases["the real steps"]["outcome"] == "passed", cases["the real steps"]
    assert cases["the deployed workflow by name"]["outcome"] == "passed", cases["the deployed workflow by name"]
    assert cases["an executor killed"]["outcome"] == "skipped"
    assert "process control" in cases["an executor killed"]["reason"]
    missing = cases["a stub the cluster's executors cannot run"]
    assert missing["outcome"] == "error" and "miniflow.scenario" in missing["reason"], missing


def processes_of(namespace: str) -> list[int]:
    """Processes whose environment names this namespace."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"MINIFLOW_NAMESPACE={namespace}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_sigterm_mid_suite_removes_the_workers_the_namespace_and_the_database(services: None, tmp_path: Path) -> None:
    (tmp_path / "slow.scenario.yaml").write_text(textwrap.dedent(f"""\
        scenario: an hour-long step
        workflow: {DATA / 'pair.yaml'}
        steps: [examples.steps]
        params: {{x: 1}}
        timeout: 2h
        stubs: {{a: {{duration: 1h, output: 1}}}}
        """))
    proc = subprocess.Popen([str(BIN / "miniflow"), "test", str(tmp_path), "--against"], cwd=ROOT,
                            env=configured(services), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"workers ready in namespace (\w+)", line)
        assert found, line
        namespace = found.group(1)
        poll(lambda: query(ADMIN_DB_URL.rsplit("/", 1)[0] + f"/miniflow_scenarios_{namespace[6:]}",
                           "select count(*) from run_steps where running_attempt = 1") == [(1,)],
             timeout=60, what="step a to be running")
        assert len(processes_of(namespace)) >= 2  # the coordinator and the executor
        proc.terminate()
        rest = proc.stderr.read()
        assert proc.wait(timeout=90) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_left_nothing(line + rest)
    assert processes_of(namespace) == []
