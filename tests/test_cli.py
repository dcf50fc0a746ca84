"""The `miniflow` command as a user runs it (a real process, the embedded mode): errors end in one
line and the documented exit code, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINIFLOW = Path(sys.executable).parent / "miniflow"


def miniflow(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "MINIFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    return subprocess.run([str(MINIFLOW), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_run_past_its_timeout_exits_124_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    slow = tmp_path / "slow.yaml"
    slow.write_text("name: slow\nsteps:\n  - {name: nap, task: test.sleep, config: {seconds: 3}}\n")
    done = miniflow(tmp_path, "run", str(slow), "--steps", "tests.steps_for_tests", "--timeout", "0.5")
    assert done.returncode == 124, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "timed out after 0.5s waiting for the run" in errors[0], done.stderr


def test_an_invalid_workflow_file_exits_2_naming_the_file_and_the_step(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - {name: a, task: t.a, needs: [ghost]}\n")
    done = miniflow(tmp_path, "validate", str(bad))
    assert done.returncode == 2
    assert f"{bad}: step 'a': needs unknown step 'ghost'" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_setting_exits_2_and_names_it(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MINIFLOW_NAMESPAC": "typo"}
    done = subprocess.run([str(MINIFLOW), "runs", "list"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "MINIFLOW_NAMESPAC" in done.stderr and "Traceback" not in done.stderr


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens there once the probe is closed


def test_a_worker_pointed_at_a_closed_broker_port_exits_3_with_one_line_and_the_password_masked(
        tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MINIFLOW_BROKER_URL": f"amqp://guest:s3cret-pw@127.0.0.1:{closed_port()}/%2F"}
    done = subprocess.run([str(MINIFLOW), "worker", "--steps", "examples.steps"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot reach the broker" in lines[0] and "guest:***@" in lines[0]
    assert "s3cret-pw" not in done.stderr and "ready" not in done.stderr


def test_a_worker_pointed_at_a_closed_database_port_exits_3_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MINIFLOW_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F",
           "MINIFLOW_DATABASE_URL": f"postgresql://miniflow:db-s3cret@127.0.0.1:{closed_port()}/miniflow"}
    done = subprocess.run([str(MINIFLOW), "worker", "--role", "coordinator"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database postgresql+psycopg2://miniflow:***@"), done.stderr
    assert "db-s3cret" not in done.stderr and "ready" not in done.stderr


def test_a_timer_pointed_at_a_closed_database_port_exits_3_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MINIFLOW_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F",
           "MINIFLOW_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port()}/miniflow"}
    done = subprocess.run([str(MINIFLOW), "timer"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_validate_reports_every_problem_of_every_file_given(tmp_path: Path) -> None:
    good = ROOT / "examples" / "diamond.yaml"
    two_problems = tmp_path / "two.yaml"
    two_problems.write_text("name: two\nsteps:\n  - {name: a, task: t.a, retries: -1}\n"
                            "  - {name: b, task: t.b, needs: [ghost]}\n")
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("name: [unclosed\n")
    done = miniflow(tmp_path, "validate", str(two_problems), str(good), str(not_yaml))
    assert done.returncode == 2
    assert "diamond" in done.stdout and "ok" in done.stdout  # the good one is still checked
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert any("step 'a'" in e and "'retries'" in e for e in errors), done.stderr
    assert any("step 'b'" in e and "unknown step 'ghost'" in e for e in errors), done.stderr
    assert any(str(not_yaml) in e and "not valid YAML" in e for e in errors), done.stderr
    assert len(errors) == 3


def test_runs_show_prints_the_steps_in_dag_order_and_the_failing_attempts_traceback(tmp_path: Path) -> None:
    flow = tmp_path / "fails.yaml"
    flow.write_text("name: fails\nsteps:\n  - {name: zz_first, task: test.echo}\n"
                    "  - {name: aa_then, task: test.boom, needs: [zz_first]}\n")
    ran = miniflow(tmp_path, "run", str(flow), "--steps", "tests.steps_for_tests", "--json")
    assert ran.returncode == 1, ran.stderr
    run_id = json.loads(ran.stdout)["id"]
    shown = miniflow(tmp_path, "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    rows = [line for line in out.splitlines() if line.startswith("│")]
    names = [name for line in rows for name in ("zz_first", "aa_then") if name in line]
    assert names == ["zz_first", "aa_then"]  # the workflow's order, not alphabetical
    assert "failed attempts:" in out and "aa_then attempt 1" in out and "(ValueError)" in out
    assert "raise ValueError(\"the input is broken\")" in out  # the traceback's last lines
    detail = json.loads(miniflow(tmp_path, "runs", "show", run_id, "--json").stdout)
    assert "Traceback" in detail["attempts"][-1]["traceback"]
    key = detail["idempotency_key"]
    by_key = miniflow(tmp_path, "runs", "show", "--key", key, "--json")
    assert json.loads(by_key.stdout)["id"] == run_id


def test_start_with_a_missing_required_param_exits_2_before_publishing(tmp_path: Path) -> None:
    flow = tmp_path / "needs.yaml"
    flow.write_text("name: needs-region\nparams: {region: {required: true}}\nsteps:\n  - {name: a, task: test.echo}\n")
    assert miniflow(tmp_path, "db", "upgrade").returncode == 0
    assert miniflow(tmp_path, "deploy", str(flow)).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "MINIFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
           "MINIFLOW_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F"}
    done = subprocess.run([str(MINIFLOW), "start", "needs-region"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    # exit 2 with the reason; a publish would have failed on the closed broker port with exit 3
    assert done.returncode == 2, done.stderr
    assert "needs param(s)" in done.stderr and "nothing was published" in done.stderr
    unknown = subprocess.run([str(MINIFLOW), "start", "no-such-flow"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert unknown.returncode == 2 and "is not deployed" in unknown.stderr


def test_text_from_messages_prints_literally_never_as_markup_or_terminal_controls(tmp_path: Path) -> None:
    from miniflow.persistence import Database, DeadLetterRow
    from miniflow.persistence import repository as repo
    from miniflow.protocol.clock import utcnow

    assert miniflow(tmp_path, "db", "upgrade").returncode == 0
    database = Database(f"sqlite:///{tmp_path / 'cli.db'}")
    hostile = "[/bold][red]x\x1b[2J\x1b]0;owned\x07\r\u202eabc"
    with database.transaction() as conn:
        repo.insert_dead_letter(conn, DeadLetterRow(queue="miniflow.ingress", code="malformed", detail=hostile,
                                                    raw=b"", created_at=utcnow(), message_id=hostile))
    database.dispose()
    shown = miniflow(tmp_path, "dead-letters", "list")
    assert shown.returncode == 0, shown.stderr
    assert "[/bold][red]x" in shown.stdout  # markup printed as text, and it did not crash the table
    assert "\\x1b[2J" in shown.stdout and "\\x07" in shown.stdout and "\\u202e" in shown.stdout
    assert not any(c in shown.stdout for c in "\x1b\x07\r\u202e")
    listed = json.loads(miniflow(tmp_path, "dead-letters", "list", "--json").stdout)
    assert listed[0]["message_id"] == hostile  # JSON keeps the exact text (escaped by JSON itself)


def test_broker_setup_prints_least_privilege_users_and_their_urls(tmp_path: Path) -> None:
    import re

    from miniflow.ops.broker_setup import plan

    done = miniflow(tmp_path, "broker", "setup", "--vhost", "prod", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert [u["role"] for u in shown["users"]] == ["core", "executor", "producer"]
    assert "set_permissions -p prod miniflow-producer '^$' '^miniflow\\.ingress$' '^$'" in shown["script"]
    assert all(u["url"].endswith("@127.0.0.1:5672/prod") for u in shown["users"])
    core, executor, producer = plan("mf-1")
    def can(pattern: str, name: str) -> bool:
        return re.search(pattern, name) is not None
    assert can(core.configure, "mf-1.results") and not can(core.configure, "other.results")
    assert all(can(executor.read, q) for q in ("mf-1.steps", "mf-1.steps.gpu", "mf-1.steps.DQ"))
    assert not any(can(executor.read, q) for q in ("mf-1.results", "mf-1.stepsx", "mf-1.ingress", "mf-1x.steps"))
    assert can(producer.write, "mf-1.ingress") and not can(producer.write, "amq.default")
    assert not can(executor.write, "mf-1.ingress") and can(executor.write, "amq.default")


def test_broker_passwords_are_letters_and_digits_so_rabbitmqctl_and_urls_take_them_as_they_are() -> None:
    from miniflow.ops.broker_setup import PASSWORD_ALPHABET, new_password, plan

    # a password that began with "-" was read by rabbitmqctl add_user as an option (exit 64)
    made = [new_password() for _ in range(2000)] + [u.password for u in plan("mf-1")]
    assert all(len(p) >= 32 and set(p) <= set(PASSWORD_ALPHABET) for p in made)
    assert len(set(made)) == len(made)
