"""The `miniflow` command as a user runs it (a real process, the embedded mode): errors end in one
line and the documented exit code, never a traceback."""

from __future__ import annotations

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
